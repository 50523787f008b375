"""``data.format = "hh"``: Anthropic HH-RLHF transcripts become a prompt and two responses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmrun.data.formats import BadRowReport, DataError, Message, read_pairs
from rmrun.data.tokenize import tokenize_pairs

CAT_ROW = {
    "chosen": "\n\nHuman: How do I get my cat to stop scratching the couch?\n\nAssistant: Give her a scratching "
    "post right next to the couch, and reward her with a treat each time she uses it.",
    "rejected": "\n\nHuman: How do I get my cat to stop scratching the couch?\n\nAssistant: Get rid of the couch.",
}
_PANCAKES = (
    "\n\nHuman: What's a good recipe for pancakes?"
    "\n\nAssistant: You'll need flour, milk, eggs, a little sugar and baking powder. Do you want the amounts?"
    "\n\nHuman: Yes please."
    "\n\nAssistant: 1 cup flour, 1 cup milk, 1 egg, 1 tablespoon sugar and 2 teaspoons baking powder."
    "\n\nHuman: Can I make them without eggs?"
)
PANCAKE_ROW = {
    "chosen": _PANCAKES + "\n\nAssistant: Yes: use half a mashed banana or 3 tablespoons of applesauce per egg.",
    "rejected": _PANCAKES + "\n\nAssistant: No.",
}
# "Human:" inside an answer, after a single newline or mid-line, is text, not a new turn.
_SCREENPLAY = "\n\nHuman: How do I write a chat between a person and a robot in my screenplay?"
SCREENPLAY_ROW = {
    "chosen": _SCREENPLAY + "\n\nAssistant: Put each speaker's name before a colon:\nHuman: Hello.\n"
    "Robot: Greetings, Human: how may I help?",
    "rejected": _SCREENPLAY + "\n\nAssistant: I don't know.",
}


def write_jsonl(path: Path, rows: list) -> str:
    """Rows are dumped as JSON; plain strings are written verbatim (for broken lines)."""
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return str(path)


def read_one(tmp_path: Path, row: dict):
    [pair] = read_pairs([write_jsonl(tmp_path / "hh.jsonl", [row])], format="hh")
    return pair


# --------------------------------------------------------------------------- parsing


def test_single_turn_row(tmp_path):
    pair = read_one(tmp_path, CAT_ROW)
    assert pair.prompt == (Message("user", "How do I get my cat to stop scratching the couch?"),)
    assert pair.chosen == (
        Message(
            "assistant",
            "Give her a scratching post right next to the couch, and reward her with a treat each time she uses it.",
        ),
    )
    assert pair.rejected == (Message("assistant", "Get rid of the couch."),)
    assert pair.source.endswith("hh.jsonl:1")


def test_multi_turn_row_keeps_every_turn_before_the_last_answer_as_the_prompt(tmp_path):
    pair = read_one(tmp_path, PANCAKE_ROW)
    assert [m.role for m in pair.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert pair.prompt[1].content.startswith("You'll need flour")
    assert pair.prompt[-1] == Message("user", "Can I make them without eggs?")
    assert pair.chosen == (
        Message("assistant", "Yes: use half a mashed banana or 3 tablespoons of applesauce per egg."),
    )
    assert pair.rejected == (Message("assistant", "No."),)


def test_human_inside_an_answer_does_not_split_it(tmp_path):
    pair = read_one(tmp_path, SCREENPLAY_ROW)
    assert len(pair.prompt) == 1
    assert pair.chosen == (
        Message(
            "assistant",
            "Put each speaker's name before a colon:\nHuman: Hello.\nRobot: Greetings, Human: how may I help?",
        ),
    )


def test_only_the_single_space_after_the_colon_is_removed(tmp_path):
    row = {
        "chosen": "\n\nHuman:  two spaces,\na newline and a trailing space \n\nAssistant:no space\n",
        "rejected": "\n\nHuman:  two spaces,\na newline and a trailing space \n\nAssistant: other",
    }
    pair = read_one(tmp_path, row)
    assert pair.prompt == (Message("user", " two spaces,\na newline and a trailing space "),)
    assert pair.chosen == (Message("assistant", "no space\n"),)
    assert pair.rejected == (Message("assistant", "other"),)


# --------------------------------------------------------------------------- bad rows

_Q = "\n\nHuman: Is the sky blue?"
BAD_ROWS = [
    pytest.param(
        {"chosen": _Q, "rejected": _Q + "\n\nAssistant: Yes."}, r'"chosen" has no Assistant turn', id="no-answer"
    ),
    pytest.param(
        {"chosen": _Q + "\n\nAssistant: Yes.\n\nHuman: Why?", "rejected": _Q + "\n\nAssistant: No."},
        r'"chosen" must end with an Assistant turn, not a Human one',
        id="ends-with-human",
    ),
    pytest.param(
        {"chosen": _Q + "\n\nAssistant: Yes.", "rejected": "\n\nHuman: Is grass green?\n\nAssistant: Yes."},
        r'"chosen" and "rejected" differ at turn 1, before their last Assistant turn',
        id="different-prompts",
    ),
    pytest.param(
        {
            "chosen": _Q + "\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant: Rayleigh scattering.",
            "rejected": _Q + "\n\nAssistant: No.",
        },
        r'"chosen" and "rejected" differ at turn 2, before their last Assistant turn',
        id="different-number-of-turns",
    ),
    pytest.param({"chosen": "", "rejected": _Q + "\n\nAssistant: No."}, r'"chosen" is empty', id="empty-text"),
    pytest.param(
        {"chosen": _Q + "\n\nAssistant: Yes.", "rejected": _Q + "\n\nAssistant: \n"},
        r'"rejected": the last Assistant turn is empty',
        id="empty-answer",
    ),
    pytest.param(
        {"chosen": "Human: Is the sky blue?\n\nAssistant: Yes.", "rejected": _Q + "\n\nAssistant: No."},
        r"\"chosen\" must start with \"\\n\\nHuman:\" \(it starts 'Human: Is the sky bl'\)",
        id="no-leading-marker",
    ),
    pytest.param(
        {"chosen": _Q + _Q + "\n\nAssistant: Yes.", "rejected": _Q + _Q + "\n\nAssistant: No."},
        r'"chosen": turn 2 is Human, expected Assistant',
        id="two-human-turns",
    ),
    pytest.param(
        {"chosen": [{"role": "user", "content": "x"}], "rejected": _Q + "\n\nAssistant: No."},
        r'"chosen" must be a string, got an array',
        id="not-a-string",
    ),
    pytest.param({"rejected": _Q + "\n\nAssistant: No."}, r'missing key "chosen"', id="missing-key"),
    pytest.param(
        {"chosen": _Q + "\n\nAssistant: Yes.", "rejected": _Q + "\n\nAssistant: Yes. "},
        r'"chosen" is identical to "rejected"',
        id="identical",
    ),
]


@pytest.mark.parametrize(("bad_row", "message"), BAD_ROWS)
def test_bad_row_raises_naming_file_and_line(tmp_path, bad_row, message):
    url = write_jsonl(tmp_path / "hh.jsonl", [CAT_ROW, "", bad_row, CAT_ROW])
    with pytest.raises(DataError, match=r"hh\.jsonl:3: " + message) as raised:
        list(read_pairs([url], format="hh"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("bad_row", "message"), BAD_ROWS)
def test_skip_mode_skips_the_bad_row(tmp_path, bad_row, message):
    url = write_jsonl(tmp_path / "hh.jsonl", [CAT_ROW, "", bad_row, PANCAKE_ROW])
    report = BadRowReport()
    pairs = list(read_pairs([url], format="hh", bad_rows="skip", report=report))
    assert [p.source for p in pairs] == [f"{url}:1", f"{url}:4"]
    assert report.total == 1 and report.examples[0].startswith(f"{url}:3: ")


# --------------------------------------------------------------------------- tokenization


def _chat_row(turns: list[str], chosen: str, rejected: str) -> dict:
    """TRL's implicit-prompt chat row: the whole conversations as {role, content} lists."""
    roles = ["user", "assistant"] * len(turns)
    prompt = [{"role": role, "content": text} for role, text in zip(roles, turns)]
    return {
        side: prompt + [{"role": "assistant", "content": answer}]
        for side, answer in (("chosen", chosen), ("rejected", rejected))
    }


def test_hh_rows_tokenize_like_the_same_conversations_as_chat_messages(tmp_path, byte_tokenizer):
    hh_rows = [CAT_ROW, PANCAKE_ROW, SCREENPLAY_ROW]
    chat_rows = [
        _chat_row(
            ["How do I get my cat to stop scratching the couch?"],
            "Give her a scratching post right next to the couch, and reward her with a treat each time she uses it.",
            "Get rid of the couch.",
        ),
        _chat_row(
            [
                "What's a good recipe for pancakes?",
                "You'll need flour, milk, eggs, a little sugar and baking powder. Do you want the amounts?",
                "Yes please.",
                "1 cup flour, 1 cup milk, 1 egg, 1 tablespoon sugar and 2 teaspoons baking powder.",
                "Can I make them without eggs?",
            ],
            "Yes: use half a mashed banana or 3 tablespoons of applesauce per egg.",
            "No.",
        ),
        _chat_row(
            ["How do I write a chat between a person and a robot in my screenplay?"],
            "Put each speaker's name before a colon:\nHuman: Hello.\nRobot: Greetings, Human: how may I help?",
            "I don't know.",
        ),
    ]
    hh = list(read_pairs([write_jsonl(tmp_path / "hh.jsonl", hh_rows)], format="hh"))
    chat = list(read_pairs([write_jsonl(tmp_path / "chat.jsonl", chat_rows)], format="pairwise"))
    assert [(p.prompt, p.chosen, p.rejected) for p in hh] == [(p.prompt, p.chosen, p.rejected) for p in chat]

    options = {"max_length": 1024, "overflow": "error", "template": None}
    from_hh = tokenize_pairs(hh, byte_tokenizer, **options)
    from_chat = tokenize_pairs(chat, byte_tokenizer, **options)
    for i in range(len(hh_rows)):
        assert from_hh.chosen(i).tolist() == from_chat.chosen(i).tolist()
        assert from_hh.rejected(i).tolist() == from_chat.rejected(i).tolist()
    # The scored text is the chat template's rendering: the prompt as turns, the answer last.
    assert byte_tokenizer.decode(from_hh.rejected(0).tolist()) == (
        "<s><|user|>\nHow do I get my cat to stop scratching the couch?</s>\n<|assistant|>\nGet rid of the couch.</s>"
    )
    assert byte_tokenizer.decode(from_hh.rejected(1).tolist()).count("<|user|>\n") == 3
