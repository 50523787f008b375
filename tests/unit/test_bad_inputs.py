"""Every bad input is one line at ``rmrun check``: exit 2, no traceback, the key or the
file:line named. A table of malformed recipes (each a valid small recipe with one
mistake) and of malformed training files."""

from __future__ import annotations

import json

import pytest

from rmrun.cli.main import main
from rmrun.errors import EXIT_USAGE
from tests.helpers import TRAIN_DATA, quickstart_slice

GOOD_ROW = json.loads(open(TRAIN_DATA).readline())

# (id, TOML appended to the valid recipe, or None; --set overrides; text the one line must hold)
RECIPES = [
    ("seed-negative", None, ["run.seed=-1"], "[run].seed: must be between 0 and 2**63-1, got -1"),
    ("seed-2**64+1", None, ["run.seed=18446744073709551617"], "[run].seed: must be between 0 and 2**63-1"),
    ("lr-nan", None, ["schedule.lr=nan"], "[schedule].lr: must be a finite number, got nan"),
    (
        "collective-timeout-inf",
        None,
        ["run.collective_timeout_minutes=inf"],
        "[run].collective_timeout_minutes: must be above 0 and at most 10,080 (a week), got inf",
    ),
    (
        "reward-stats-pairs-zero",
        None,
        ["output.reward_stats_pairs=0"],
        "[output].reward_stats_pairs: must be at least 1",
    ),
    ("lr-inf", None, ["schedule.lr=inf"], "[schedule].lr: must be a finite number, got inf"),
    ("lr-negative", None, ["schedule.lr=-1e-5"], "[schedule].lr: must be positive"),
    ("lora-dropout-5", "[model.lora]\ndropout = 5.0\n", [], "[model.lora].dropout: must be in [0, 1), got 5.0"),
    ("lora-dropout-negative", "[model.lora]\ndropout = -0.1\n", [], "[model.lora].dropout: must be in [0, 1)"),
    ("lora-dropout-one", "[model.lora]\ndropout = 1.0\n", [], "[model.lora].dropout: must be in [0, 1)"),
    ("lora-dropout-nan", "[model.lora]\ndropout = nan\n", [], "[model.lora].dropout: must be a finite number"),
    ("lora-alpha-zero", "[model.lora]\nalpha = 0\n", [], "[model.lora].alpha: must be positive"),
    ("lora-r-zero", "[model.lora]\nr = 0\n", [], "[model.lora].r: must be at least 1"),
    ("state-unknown-protocol", None, ["run.state=foo://x"], '[run].state: unknown URL protocol "foo://"'),
    ("output-unknown-protocol", None, ["output.dir=foo://x"], '[output].dir: unknown URL protocol "foo://"'),
    ("state-not-a-url", None, ["run.state=://x"], "[run].state: '://x' is not a URL"),
    ("batch-size-1e12", None, ["schedule.batch_size=1000000000000"], "[schedule].batch_size: 1000000000000 is beyond"),
    ("max-steps-1e26", None, ["schedule.max_steps=100000000000000000000000000"], "[schedule].max_steps: 1000"),
    (
        "batch-larger-than-data",
        None,
        ["schedule.batch_size=64"],
        "[schedule].batch_size: one optimizer step takes 64 pairs",
    ),
    ("accumulation-larger-than-data", None, ["schedule.accumulation_steps=5"], "but the training set has 32"),
    ("run-name-dotdot", None, ["run.name=../../etc"], "[run].name: '../../etc' must be a single path segment"),
    ("run-name-slash", None, ["run.name=a/b"], "[run].name: 'a/b' must be a single path segment"),
    ("run-name-hidden", None, ['run.name=".x"'], "[run].name: '.x' must be a single path segment"),
    ("run-name-empty", None, ['run.name=""'], "[run].name: '' must be a single path segment"),
    ("weight-decay-nan", None, ["schedule.weight_decay=nan"], "[schedule].weight_decay: must be a finite number"),
    ("grad-clip-inf", None, ["schedule.grad_clip=inf"], "[schedule].grad_clip: must be a finite number"),
    ("margin-nan", None, ["loss.margin=nan"], "[loss].margin: must be a finite number"),
    (
        "interval-seconds-nan",
        None,
        ["checkpoint.interval_seconds=nan"],
        "[checkpoint].interval_seconds: must be a finite",
    ),
    (
        "interval-seconds-negative",
        None,
        ["checkpoint.interval_seconds=-1"],
        "[checkpoint].interval_seconds: must be positive",
    ),
    (
        "stop-budget-nan",
        None,
        ["checkpoint.stop_budget_seconds=nan"],
        "[checkpoint].stop_budget_seconds: must be a finite",
    ),
    (
        "stop-budget-zero",
        None,
        ["checkpoint.stop_budget_seconds=0"],
        "[checkpoint].stop_budget_seconds: must be positive, got 0",
    ),
    (
        "async-upload-not-bool",
        None,
        ["checkpoint.async_upload=maybe"],
        "[checkpoint].async_upload: expected true or false",
    ),
    ("max-length-small", None, ["data.max_length=4"], "[data].max_length: must be at least 8"),
    ("max-length-huge", None, ["data.max_length=1000000000"], "[data].max_length: 1000000000 is beyond"),
    ("accumulation-zero", None, ["schedule.accumulation_steps=0"], "[schedule].accumulation_steps: must be at least 1"),
    ("max-epochs-zero", None, ["schedule.max_epochs=0"], "[schedule].max_epochs: must be at least 1"),
    ("warmup-negative", None, ["schedule.warmup_steps=-1"], "[schedule].warmup_steps: must be 0 or more"),
    ("eval-batch-zero", None, ["eval.batch_size=0"], "[eval].batch_size: must be at least 1"),
    ("eval-interval-zero", None, ["eval.interval_steps=0"], "[eval].interval_steps: must be at least 1"),
    ("keep-one", None, ["checkpoint.keep=1"], "[checkpoint].keep: must be at least 2"),
    ("log-interval-zero", None, ["log.interval_steps=0"], "[log].interval_steps: must be at least 1"),
    ("tp-without-3d", None, ["plugin.tp=2"], '[plugin].tp: only the "3d" plugin shards models'),
    ("plugin-typo", None, ["plugin.name=zero3"], "[plugin].name: 'zero3' is not one of"),
    ("fp16-on-cpu", None, ["plugin.mixed_precision=fp16"], '[plugin].mixed_precision: "fp16" needs CUDA'),
    ("format-unknown", None, ["data.format=sharegpt"], "[data].format: 'sharegpt' is not one of"),
    ("nonfinite-unknown", None, ["schedule.nonfinite=ignore"], "[schedule].nonfinite: 'ignore' is not one of"),
    (
        "trust-remote-code-string",
        None,
        ['model.trust_remote_code="yes"'],
        "[model].trust_remote_code: expected true or false",
    ),
    ("unknown-key", "[eval]\nbatchsize = 8\n", [], '[eval].batchsize: unknown key (did you mean "batch_size"?)'),
    ("unknown-table", "[schedul]\nlr = 1e-5\n", [], '[schedul]: unknown table (did you mean "schedule"?)'),
    ("train-missing", None, ["data.train=no-such-file.jsonl"], "[data].train: file not found:"),
    ("eval-missing", None, ["data.eval=no-such-file.jsonl"], "[data].eval: file not found:"),
    ("chat-template-empty", None, ['data.chat_template=""'], "[data].chat_template: must not be empty"),
    ("state-empty", None, ['run.state=""'], "[run].state: must not be empty"),
    ("output-under-a-file", None, ["output.dir=/dev/null/export"], "[output].dir: /dev/null is a file, not a folder"),
    ("state-under-a-file", None, ["run.state=/dev/null/state"], "[run].state: /dev/null is a file, not a folder"),
]


def check_one_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rmrun: ")
    return lines[0]


@pytest.fixture(autouse=True)
def cpu_world(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)


def test_the_tables_are_big_enough():
    assert len(RECIPES) >= 40 and len(DATA_FILES) >= 15


def test_the_valid_base_recipe_passes(tmp_path, capsys):
    assert main(["check", quickstart_slice(tmp_path, None)]) == 0
    assert "32 pairs read" in capsys.readouterr().out


@pytest.mark.parametrize("extra, sets, expected", [r[1:] for r in RECIPES], ids=[r[0] for r in RECIPES])
def test_a_malformed_recipe_is_one_line_naming_the_key(tmp_path, capsys, extra, sets, expected):
    recipe = quickstart_slice(tmp_path, extra)
    line = check_one_line(capsys, ["check", recipe, *(a for s in sets for a in ("--set", s))])
    assert line.startswith(f"rmrun: {recipe}: "), line
    assert expected in line, line


def _keys(err: str) -> list[str]:
    return [next(part for part in line.split(": ") if part.startswith("[")) for line in err.splitlines()]


def test_all_recipe_mistakes_are_reported_in_one_pass(tmp_path, capsys):
    recipe = quickstart_slice(tmp_path, None)
    code = main(["check", recipe, "--set", "run.seed=-1", "--set", "schedule.lr=nan", "--set", "run.name=../x"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "Traceback" not in err
    assert _keys(err) == ["[run].seed", "[schedule].lr", "[run].name"], err


def test_all_environment_problems_are_reported_in_one_pass(tmp_path, capsys):
    """On a recipe without mistakes of its own: locations, inputs and data, all at once."""
    recipe = quickstart_slice(tmp_path, None)
    code = main(
        [
            "check",
            recipe,
            "--set",
            "output.dir=foo://x",
            "--set",
            "plugin.mixed_precision=fp16",
            "--set",
            "data.eval=missing.jsonl",
            "--set",
            "schedule.batch_size=33",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "Traceback" not in err
    assert _keys(err) == ["[plugin].mixed_precision", "[output].dir", "[data].eval", "[schedule].batch_size"], err


# ------------------------------------------------------------------ data files


def row(**changes) -> str:
    data = dict(GOOD_ROW, **changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del data[key]
    return json.dumps(data)


_DROP = object()
GOOD = json.dumps(GOOD_ROW)

# (id, file name, content, the line number named (None: the file), text the line must hold)
DATA_FILES = [
    ("empty", "train.jsonl", "", None, "no preference pairs in {path} (0 pairs read, 0 bad rows skipped)"),
    ("blank-lines", "train.jsonl", "\n  \n\n", None, "(0 pairs read, 0 bad rows skipped)"),
    ("invalid-json", "train.jsonl", f"{GOOD}\n{{not json\n", 2, "invalid JSON"),
    ("array-row", "train.jsonl", f"{GOOD}\n{GOOD}\n[1, 2]\n", 3, "expected a JSON object, got an array"),
    ("string-row", "train.jsonl", '"hello"\n', 1, "expected a JSON object, got a string"),
    ("missing-chosen", "train.jsonl", row(chosen=_DROP) + "\n", 1, 'missing key "chosen"'),
    ("empty-chosen", "train.jsonl", f"{GOOD}\n" + row(chosen=[]) + "\n", 2, '"chosen" is empty'),
    ("number-chosen", "train.jsonl", row(chosen=5) + "\n", 1, '"chosen" must be a list of messages'),
    ("message-without-content", "train.jsonl", row(chosen=[{"from": "assistant"}]) + "\n", 1, 'missing key "content"'),
    (
        "unknown-role",
        "train.jsonl",
        row(chosen=[{"from": "wizard", "content": "x"}]) + "\n",
        1,
        "unknown role 'wizard'",
    ),
    ("chosen-is-rejected", "train.jsonl", row(rejected=GOOD_ROW["chosen"]) + "\n", 1, "identical"),
    ("null-context", "train.jsonl", row(context=None) + "\n", 1, '"context" is null'),
    ("json-not-an-array", "train.json", '{"a": 1}', None, "expected a JSON array of objects, got an object"),
    ("json-invalid", "train.json", f"[\n{GOOD},\n{{oops\n]", 3, "invalid JSON"),
    ("csv", "train.csv", "a,b\n", None, "unknown file type; expected .jsonl, .json or .parquet"),
    ("not-utf8", "train.jsonl", f"{GOOD}\n".encode() + b'{"context": "\xe9"}\n', 2, "not UTF-8"),
    ("not-parquet", "train.parquet", b"garbage", None, "not a readable Parquet file"),
]


@pytest.mark.parametrize(
    "name, content, line_no, expected", [d[1:] for d in DATA_FILES], ids=[d[0] for d in DATA_FILES]
)
def test_a_malformed_training_file_is_one_line_naming_file_and_line(tmp_path, capsys, name, content, line_no, expected):
    recipe = quickstart_slice(tmp_path, None)
    bad = tmp_path / "bad" / name
    bad.parent.mkdir()
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = check_one_line(capsys, ["check", recipe, "--set", f"data.train={bad}"])
    where = f"{bad}:{line_no}: " if line_no else f"{bad}"
    assert where in line, line
    assert expected.format(path=bad) in line, line


def test_every_row_skipped_is_an_error_with_the_counts(tmp_path, capsys):
    recipe = quickstart_slice(tmp_path, None)
    bad = tmp_path / "skipped.jsonl"
    bad.write_text(row(chosen=[]) + "\n" + '"x"\n' + row(chosen=_DROP) + "\n")
    line = check_one_line(capsys, ["check", recipe, "--set", f"data.train={bad}", "--set", "data.bad_rows=skip"])
    assert f"[data].train: no preference pairs in {bad} (0 pairs read, 3 bad rows skipped)" in line


def test_an_empty_eval_file_is_named_as_eval(tmp_path, capsys):
    recipe = quickstart_slice(tmp_path, None)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = check_one_line(capsys, ["check", recipe, "--set", f"data.eval={empty}"])
    assert "[data].eval: no preference pairs" in line and "nothing to evaluate" in line


def test_a_known_protocol_whose_package_is_missing_names_the_package(monkeypatch):
    import importlib.util

    from rmrun.run import preflight

    real = importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None if name == "gcsfs" else real(name))
    assert preflight.protocol_problem("gs://bucket/run") == '"gs://" needs the gcsfs package: pip install gcsfs'
    assert preflight.protocol_problem("memory://run") is None
    assert preflight.protocol_problem("/a/local/path") is None
    assert preflight.protocol_problem("bogus://x").startswith('unknown URL protocol "bogus://"')


def test_os_errors_become_one_line_that_says_what_to_do():
    import errno

    from rmrun.run.commands import _os_error_line

    full = _os_error_line(OSError(errno.ENOSPC, "No space left on device", "/state/x"))
    assert full.startswith("disk full on /state/x: No space left on device;") and "\n" not in full
    assert _os_error_line(OSError(errno.EACCES, "Permission denied")).startswith("permission denied: ")
    assert _os_error_line(OSError(errno.EROFS, "Read-only file system")).startswith("read-only file system: ")
