"""``rmrun score`` on files with bad rows (``--bad-rows skip|error``) and on HH-RLHF rows,
in process, with a tiny export built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmrun.data.formats import DataError, Message
from rmrun.serve.exported import ScoreError
from rmrun.serve.scoring import read_rows, score, score_lines

GOOD = {"prompt": "Is the sky blue?", "chosen": "Yes, on a clear day.", "rejected": "No.", "id": "a"}
OTHER = {"prompt": "Is grass green?", "chosen": "Mostly, yes.", "rejected": "It is purple.", "id": "d"}
EMPTY_RESPONSE = {"prompt": "Is snow white?", "chosen": "", "rejected": "No.", "id": "b"}
HH = {
    "chosen": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Is the sky blue?\n\nAssistant: Yes.",
    "rejected": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Is the sky blue?\n\nAssistant: No.",
}


def write_jsonl(path: Path, rows: list) -> str:
    """Rows are dumped as JSON; plain strings are written verbatim (for broken lines)."""
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer) -> str:
    """A two-layer Llama reward model and the byte tokenizer, saved as ``rmrun run`` exports them."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rmrun.model.model import export_reward_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(byte_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=byte_tokenizer.pad_token_id,
    )
    directory = str(tmp_path_factory.mktemp("model"))
    export_reward_model(LlamaForSequenceClassification(config), byte_tokenizer, directory)
    return directory


def export_for(model_dir: str, tmp_path: Path, *, format: str) -> str:
    """The model directory with the ``rmrun.json`` of a run trained with ``[data].format = format``."""
    import shutil

    from rmrun.recipe.schema import DataSection, LossSection
    from rmrun.serve.exported import write_contract

    directory = str(tmp_path / f"export-{format}")
    shutil.copytree(model_dir, directory)
    data = DataSection(train=("train.jsonl",), format=format, max_length=256)
    write_contract(directory, data=data, loss=LossSection(), family="decoder", reward_stats=None)
    return directory


def scored(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


# --------------------------------------------------------------------------- reading rows


def test_skip_keeps_a_row_with_its_error_in_its_place(tmp_path):
    url = write_jsonl(tmp_path / "rows.jsonl", [GOOD, EMPTY_RESPONSE, "", "not json", OTHER])
    rows = read_rows([url], format="pairwise", bad_rows="skip")
    assert [row.source for row in rows] == [f"{url}:{line}" for line in (1, 2, 4, 5)]
    assert [row.error for row in rows] == [None, '"chosen" is empty', "invalid JSON: Expecting value (column 1)", None]
    assert rows[1].pair is None and rows[1].row_id == "b"


def test_error_stops_at_the_first_bad_row_in_one_line(tmp_path):
    url = write_jsonl(tmp_path / "rows.jsonl", [GOOD, EMPTY_RESPONSE, OTHER])
    with pytest.raises(DataError, match=r'^\S*rows\.jsonl:2: "chosen" is empty$'):
        read_rows([url], format="pairwise", bad_rows="error")


def test_a_file_of_bad_rows_only_is_an_error_even_when_skipping(tmp_path):
    url = write_jsonl(tmp_path / "rows.jsonl", [EMPTY_RESPONSE, "[1, 2]"])
    with pytest.raises(ScoreError, match=r'no row could be scored; the first: \S*rows\.jsonl:1: "chosen" is empty$'):
        read_rows([url], format="pairwise", bad_rows="skip")


def test_score_lines_give_the_bad_row_an_error_line(tmp_path):
    url = write_jsonl(tmp_path / "rows.jsonl", [GOOD, EMPTY_RESPONSE, OTHER])
    rows = read_rows([url], format="pairwise", bad_rows="skip")
    lines = score_lines(rows, {0: (1.0, 0.5, 9, 5), 2: (0.0, 0.25, 7, 8)})
    assert lines[1] == {"row": 1, "source": f"{url}:2", "id": "b", "error": '"chosen" is empty'}
    assert [line["row"] for line in lines] == [0, 1, 2]
    assert lines[2]["margin"] == -0.25


@pytest.mark.parametrize(
    ("format", "prompt_turns"),
    [("hh", 3), ("colossalchat", 3), ("pairwise", 0)],
)
def test_hh_rows_are_read_as_transcripts_unless_the_model_read_them_as_plain_text(tmp_path, format, prompt_turns):
    """A model trained with format = "pairwise" scored such rows as one plain-text response; scoring keeps that."""
    url = write_jsonl(tmp_path / "hh.jsonl", [HH])
    [row] = read_rows([url], format=format)
    assert len(row.pair.prompt) == prompt_turns
    if prompt_turns:
        assert row.pair.chosen == (Message("assistant", "Yes."),)


def test_a_malformed_transcript_is_an_hh_error_for_an_hh_model(tmp_path):
    url = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "Human: Hi\n\nAssistant: Yes.", "rejected": HH["rejected"]}])
    with pytest.raises(DataError, match=r'hh\.jsonl:1: "chosen" must start with "\\n\\nHuman:"'):
        read_rows([url], format="hh")


# --------------------------------------------------------------------------- rmrun score


def test_score_skips_a_bad_row_names_it_and_lines_up_with_the_input(model_dir, tmp_path, capsys):
    export = export_for(model_dir, tmp_path, format="pairwise")
    url = write_jsonl(tmp_path / "rows.jsonl", [GOOD, EMPTY_RESPONSE, OTHER])
    out = tmp_path / "scores.jsonl"
    assert score(export, [url], out=str(out), batch_size=2) == 0
    lines = scored(out)
    assert [(line["row"], line["source"], line["id"]) for line in lines] == [
        (0, f"{url}:1", "a"),
        (1, f"{url}:2", "b"),
        (2, f"{url}:3", "d"),
    ]
    assert lines[1] == {"row": 1, "source": f"{url}:2", "id": "b", "error": '"chosen" is empty'}
    assert capsys.readouterr().err.splitlines() == [
        f'{url}:2: "chosen" is empty (skipped)',
        f"scored 2 of 3 rows, skipped 1 bad; wrote {out}",
    ]
    # The good rows score as they do in a file without the bad one.
    clean = tmp_path / "clean.jsonl"
    assert score(export, [write_jsonl(tmp_path / "good.jsonl", [GOOD, OTHER])], out=str(clean), batch_size=2) == 0
    for kept, alone in zip((lines[0], lines[2]), scored(clean)):
        assert kept["chosen"] == pytest.approx(alone["chosen"], abs=1e-6)
        assert kept["rejected"] == pytest.approx(alone["rejected"], abs=1e-6)


def test_bad_rows_error_exits_2_with_one_line(model_dir, tmp_path, capsys):
    from rmrun.cli.main import main

    export = export_for(model_dir, tmp_path, format="pairwise")
    url = write_jsonl(tmp_path / "rows.jsonl", [GOOD, EMPTY_RESPONSE, OTHER])
    assert main(["score", export, url, "--bad-rows", "error"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f'rmrun: {url}:2: "chosen" is empty']


def test_hh_model_scores_hh_rows_like_the_same_chat_rows(model_dir, tmp_path):
    export = export_for(model_dir, tmp_path, format="hh")
    chat = {
        side: [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello, how can I help?"},
            {"role": "user", "content": "Is the sky blue?"},
            {"role": "assistant", "content": answer},
        ]
        for side, answer in (("chosen", "Yes."), ("rejected", "No."))
    }
    url = write_jsonl(tmp_path / "mixed.jsonl", [HH, chat])
    out = tmp_path / "scores.jsonl"
    assert score(export, [url], out=str(out), batch_size=2) == 0
    from_hh, from_chat = scored(out)
    # Same tokens, another row of the batch: equal up to float rounding.
    assert from_hh["chosen"] == pytest.approx(from_chat["chosen"], abs=1e-6)
    assert from_hh["rejected"] == pytest.approx(from_chat["rejected"], abs=1e-6)
