"""Reading preference pairs: formats, file types, fsspec URLs and bad-row handling."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rmrun.data.formats import BadRowReport, DataError, Message, PreferencePair, read_pairs

DATA_DIR = Path(__file__).parents[1] / "data"

COLOSSAL_ROW = {
    "context": [
        {"from": "system", "content": "Be brief."},
        {"from": "user", "content": "Hi there"},
        {"from": "assistant", "content": "Hello!"},
        {"from": "user", "content": "What is two plus two?"},
    ],
    "chosen": [{"from": "assistant", "content": "Four."}],
    "rejected": [{"from": "assistant", "content": "Five."}],
}
PLAIN_ROW = {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five."}


def write_jsonl(path: Path, lines: list) -> str:
    """Rows are dumped as JSON; plain strings are written verbatim (for broken lines)."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return str(path)


def read_all(urls, **kwargs) -> list[PreferencePair]:
    return list(read_pairs(urls, **kwargs))


# --------------------------------------------------------------------------- formats


def test_colossalchat_row_keeps_system_and_multi_turn_context(tmp_path):
    url = write_jsonl(tmp_path / "file.jsonl", [COLOSSAL_ROW])
    [pair] = read_all([url], format="colossalchat")
    assert pair.prompt == (
        Message("system", "Be brief."),
        Message("user", "Hi there"),
        Message("assistant", "Hello!"),
        Message("user", "What is two plus two?"),
    )
    assert pair.chosen == (Message("assistant", "Four."),)
    assert pair.rejected == (Message("assistant", "Five."),)
    assert pair.source == f"{url}:1"


def test_real_colossalchat_sample_reads():
    url = str(DATA_DIR / "colossalchat_preference_sample.jsonl")
    pairs = read_all([url], format="colossalchat")
    assert len(pairs) == 1
    assert [m.role for m in pairs[0].prompt] == ["user", "assistant", "user"]
    assert pairs[0].chosen[0].content.startswith("Certainly!")
    assert pairs[0].rejected[0].role == "assistant"


def test_pairwise_plain_text(tmp_path):
    url = write_jsonl(tmp_path / "file.jsonl", [PLAIN_ROW, {"prompt": "", "chosen": "Yes.", "rejected": "No."}])
    with_prompt, without_prompt = read_all([url], format="pairwise")
    assert with_prompt.prompt == (Message("user", "What is two plus two?"),)
    assert with_prompt.chosen == (Message("assistant", "Four."),)
    assert with_prompt.rejected == (Message("assistant", "Five."),)
    assert without_prompt.prompt == ()
    assert without_prompt.source.endswith("file.jsonl:2")


def test_pairwise_conversational(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    [pair] = read_all([write_jsonl(tmp_path / "file.jsonl", [row])], format="pairwise")
    assert pair.prompt == (Message("system", "Be kind."), Message("user", "Hi"))
    assert pair.chosen == (Message("assistant", "Hello!"),)
    assert pair.rejected == (Message("assistant", "Go away."),)


def test_pairwise_implicit_prompt_splits_at_longest_common_prefix(tmp_path):
    shared = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    row = {
        "chosen": shared + [{"role": "assistant", "content": "Why did the chicken..."}],
        "rejected": shared + [{"role": "assistant", "content": "No."}],
    }
    [pair] = read_all([write_jsonl(tmp_path / "file.jsonl", [row])], format="pairwise")
    assert [m.content for m in pair.prompt] == ["Hi", "Hello!", "Tell me a joke"]
    assert pair.chosen == (Message("assistant", "Why did the chicken..."),)
    assert pair.rejected == (Message("assistant", "No."),)


def test_pairwise_implicit_prompt_plain_text_has_no_prompt(tmp_path):
    url = write_jsonl(tmp_path / "file.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    [pair] = read_all([url], format="pairwise")
    assert pair.prompt == ()
    assert pair.chosen == (Message("assistant", "The sky is blue."),)


# --------------------------------------------------------------------------- file types and URLs


def test_json_array_file(tmp_path):
    path = tmp_path / "file.json"
    path.write_text(json.dumps([PLAIN_ROW, {**PLAIN_ROW, "chosen": "4"}]))
    pairs = read_all([str(path)], format="pairwise")
    assert [p.chosen[0].content for p in pairs] == ["Four.", "4"]
    assert pairs[1].source == f"{path}:item 1"


def test_json_array_bad_item_names_the_item(tmp_path):
    path = tmp_path / "file.json"
    path.write_text(json.dumps([PLAIN_ROW, {**PLAIN_ROW, "rejected": ""}]))
    with pytest.raises(DataError, match=r"file\.json:item 1: \"rejected\" is empty"):
        read_all([str(path)], format="pairwise")


def test_json_file_that_is_not_an_array_is_a_file_error(tmp_path):
    path = tmp_path / "file.json"
    path.write_text(json.dumps(PLAIN_ROW))
    with pytest.raises(DataError, match=r"file\.json: expected a JSON array"):
        read_all([str(path)], format="pairwise")


def test_parquet_file_with_nested_messages(tmp_path):
    path = tmp_path / "file.parquet"
    second = {**COLOSSAL_ROW, "rejected": [{"from": "assistant", "content": "Twenty-two."}]}
    pq.write_table(pa.Table.from_pylist([COLOSSAL_ROW, second]), path)
    pairs = read_all([str(path)], format="colossalchat")
    assert [p.rejected[0].content for p in pairs] == ["Five.", "Twenty-two."]
    assert pairs[0].prompt[0] == Message("system", "Be brief.")
    assert pairs[1].source == f"{path}:row 1"


def test_parquet_bad_row_names_the_row(tmp_path):
    path = tmp_path / "file.parquet"
    pq.write_table(pa.Table.from_pylist([PLAIN_ROW, PLAIN_ROW, {**PLAIN_ROW, "rejected": None}]), path)
    with pytest.raises(DataError, match=r"file\.parquet:row 2: \"rejected\" is null"):
        read_all([str(path)], format="pairwise")


def test_unreadable_parquet_is_a_file_error(tmp_path):
    path = tmp_path / "file.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"file\.parquet: not a readable Parquet file"):
        read_all([str(path)], format="pairwise")


def test_memory_url():
    fs = fsspec.filesystem("memory")
    path = f"/rmrun-test-{uuid.uuid4().hex}/pairs.jsonl"
    fs.pipe(path, (json.dumps(PLAIN_ROW) + "\n").encode())
    try:
        [pair] = read_all([f"memory://{path}"], format="pairwise")
    finally:
        fs.rm(path)
    assert pair.chosen == (Message("assistant", "Four."),)
    assert pair.source == f"memory://{path}:1"


def test_gzip_jsonl_is_read_through_compression_suffix(tmp_path):
    import gzip

    path = tmp_path / "file.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(PLAIN_ROW) + "\n").encode()))
    [pair] = read_all([str(path)], format="pairwise")
    assert pair.rejected == (Message("assistant", "Five."),)


def test_several_files_are_read_in_order(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [PLAIN_ROW])
    second = write_jsonl(tmp_path / "b.jsonl", [{**PLAIN_ROW, "chosen": "4"}])
    pairs = read_all([first, second], format="pairwise")
    assert [p.source for p in pairs] == [f"{first}:1", f"{second}:1"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        read_all([str(tmp_path / "nope.jsonl")], format="pairwise")


def test_unknown_extension(tmp_path):
    path = tmp_path / "file.csv"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"file\.csv: unknown file type"):
        read_all([str(path)], format="pairwise")


def test_unknown_format_is_rejected(tmp_path):
    url = write_jsonl(tmp_path / "file.jsonl", [PLAIN_ROW])
    with pytest.raises(ValueError, match="unknown data format 'sharegpt'"):
        read_all([url], format="sharegpt")


# --------------------------------------------------------------------------- bad rows


def _conversation(*roles: str) -> list[dict]:
    return [{"from": role, "content": f"{role} says something"} for role in roles]


# Each bad row sits on line 3 behind a good row and a blank line, so the line number is checked too.
BAD_ROWS = [
    pytest.param("pairwise", '{"prompt": "p", "chosen": ', r"invalid JSON", id="invalid-json"),
    pytest.param("pairwise", "[1, 2]", r"expected a JSON object, got an array", id="not-object"),
    pytest.param("pairwise", {"prompt": "p", "chosen": "a"}, r'missing key "rejected"', id="missing-key"),
    pytest.param(
        "pairwise",
        {"prompt": "p", "chosen": 5, "rejected": "b"},
        r'"chosen" must be a string, got a number',
        id="wrong-type",
    ),
    pytest.param(
        "pairwise",
        {"prompt": 7, "chosen": "a", "rejected": "b"},
        r'"prompt" must be a string or a list',
        id="wrong-type-prompt",
    ),
    pytest.param(
        "pairwise", {"prompt": "p", "chosen": " \n", "rejected": "b"}, r'"chosen" is empty', id="empty-chosen"
    ),
    pytest.param(
        "pairwise", {"prompt": "p", "chosen": "a", "rejected": ""}, r'"rejected" is empty', id="empty-rejected"
    ),
    pytest.param(
        "pairwise",
        {"prompt": "p", "chosen": "Same.", "rejected": " Same. "},
        r'"chosen" is identical to "rejected"',
        id="identical",
    ),
    pytest.param(
        "colossalchat",
        {
            "context": _conversation("user", "user"),
            "chosen": _conversation("assistant"),
            "rejected": [{"from": "assistant", "content": "x"}],
        },
        r'roles do not alternate in "context": message 1 is \'user\'',
        id="roles-not-alternating",
    ),
    pytest.param(
        "colossalchat",
        {
            "context": _conversation("user", "assistant"),
            "chosen": _conversation("assistant"),
            "rejected": [{"from": "assistant", "content": "x"}],
        },
        r'"context" must end with a user turn',
        id="context-ends-with-assistant",
    ),
    pytest.param(
        "colossalchat",
        {
            "context": _conversation("bot"),
            "chosen": _conversation("assistant"),
            "rejected": [{"from": "assistant", "content": "x"}],
        },
        r'"context"\[0\]: unknown role \'bot\'',
        id="unknown-role",
    ),
    pytest.param(
        "colossalchat",
        {
            "context": _conversation("user"),
            "chosen": _conversation("user"),
            "rejected": [{"from": "assistant", "content": "x"}],
        },
        r'roles do not alternate in "chosen"',
        id="response-from-user",
    ),
    pytest.param(
        "colossalchat",
        {"context": _conversation("user"), "chosen": [], "rejected": [{"from": "assistant", "content": "x"}]},
        r'"chosen" is empty',
        id="empty-response-list",
    ),
    pytest.param(
        "colossalchat",
        {"context": _conversation("user"), "chosen": [{"from": "assistant"}], "rejected": _conversation("assistant")},
        r'"chosen"\[0\]: missing key "content"',
        id="message-missing-content",
    ),
]


@pytest.mark.parametrize(("format", "bad_line", "message"), BAD_ROWS)
def test_bad_row_raises_naming_file_and_line(tmp_path, format, bad_line, message):
    good = COLOSSAL_ROW if format == "colossalchat" else PLAIN_ROW
    url = write_jsonl(tmp_path / "file.jsonl", [good, "", bad_line, good])
    with pytest.raises(DataError, match=r"file\.jsonl:3: " + message) as raised:
        read_all([url], format=format)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("format", "bad_line", "message"), BAD_ROWS)
def test_skip_mode_skips_the_bad_row_and_records_it(tmp_path, format, bad_line, message):
    good = COLOSSAL_ROW if format == "colossalchat" else PLAIN_ROW
    url = write_jsonl(tmp_path / "file.jsonl", [good, "", bad_line, good])
    report = BadRowReport()
    pairs = read_all([url], format=format, bad_rows="skip", report=report)
    assert [p.source for p in pairs] == [f"{url}:1", f"{url}:4"]
    assert report.total == 1
    assert len(report.examples) == 1 and report.examples[0].startswith(f"{url}:3: ")


def test_skip_mode_counts_per_reason_and_keeps_first_five_messages(tmp_path):
    lines = [PLAIN_ROW]
    lines += [{"prompt": "p", "chosen": "", "rejected": "b"}] * 4  # lines 2-5
    lines += [{"prompt": "p", "chosen": "a"}] * 2  # lines 6-7
    lines += ["not json", PLAIN_ROW]  # lines 8-9
    url = write_jsonl(tmp_path / "file.jsonl", lines)
    report = BadRowReport()
    pairs = read_all([url], format="pairwise", bad_rows="skip", report=report)
    assert len(pairs) == 2
    assert dict(report.counts) == {"empty response": 4, "missing key": 2, "invalid JSON": 1}
    assert report.total == 7
    assert report.examples == [f'{url}:{line}: "chosen" is empty' for line in (2, 3, 4, 5)] + [
        f'{url}:6: missing key "rejected"'
    ]
    summary = report.summary()
    assert summary.startswith("skipped 7 bad row(s): 4 empty response, 2 missing key, 1 invalid JSON")
    assert f"{url}:6: missing key" in summary
    assert f"{url}:8" not in summary


def test_summary_without_bad_rows():
    assert BadRowReport().summary() == "no bad rows"


def test_skip_mode_needs_a_report(tmp_path):
    url = write_jsonl(tmp_path / "file.jsonl", [PLAIN_ROW])
    with pytest.raises(ValueError, match="BadRowReport"):
        read_all([url], format="pairwise", bad_rows="skip")


def test_implicit_prompt_with_different_system_messages_is_a_role_error(tmp_path):
    row = {
        "chosen": [
            {"role": "system", "content": "A"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "x"},
        ],
        "rejected": [
            {"role": "system", "content": "B"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "y"},
        ],
    }
    url = write_jsonl(tmp_path / "file.jsonl", [row])
    with pytest.raises(DataError, match=r'file\.jsonl:1: roles do not alternate in "chosen": message 0 is \'system\''):
        read_all([url], format="pairwise")


def test_every_format_has_a_row_parser_and_a_recipe_choice():
    from typing import get_args, get_type_hints

    from rmrun.data.formats import FORMATS
    from rmrun.data.rows import _ROW_PARSERS
    from rmrun.recipe.schema import RATED_FORMATS, DataSection

    assert (*_ROW_PARSERS, *RATED_FORMATS) == FORMATS == get_args(get_type_hints(DataSection)["format"])
