"""Every command, in-process, with a user error (2), a state it must not use (3) and a bug
inside it (1): each code comes from the one map in rmrun.errors, each failure is one
``rmrun:`` line (a bug alone carries its traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmrun import errors
from rmrun.cli.main import COMMANDS, main
from tests.helpers import EVAL_DATA, QUICKSTART, small_recipe

BAD_RECIPE = str(Path(__file__).resolve().parents[1] / "recipes_bad" / "unknown_key.toml")
NEWER = "written by a newer rmrun (format 2"


def _newer_format_state(root: Path, key: str) -> str:
    """A state root holding ``key`` committed by a newer rmrun (its COMMIT in format 2)."""
    commit = root / "states" / key / "COMMIT"
    commit.parent.mkdir(parents=True)
    commit.write_text(json.dumps({"format": 2, "attempt": "g1-x", "manifest_sha256": "0" * 64}))
    return str(root)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("rmrun: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# command -> argv with a user's mistake in it, and what the line says
USER_ERRORS = {
    "run": ([BAD_RECIPE], "unknown key"),
    "check": ([BAD_RECIPE], "unknown key"),
    "status": ([BAD_RECIPE], "unknown key"),
    "explain": (["data.pair_rul"], 'data.pair_rul: not a recipe table or key (did you mean "data.pair_rule"?)'),
    "init": (["{missing}", EVAL_DATA, "--out", "{out}"], "{out}: exists; rmrun init never overwrites"),
    "verify-resume": ([BAD_RECIPE], "unknown key"),
    "score": (["{missing}", EVAL_DATA], "{missing}"),
    "eval": (["{missing}", EVAL_DATA], "{missing}"),
    "report": (["{missing}"], "{missing}"),
    "bench": ([BAD_RECIPE], "unknown key"),
}


def test_the_table_names_every_command():
    assert sorted(USER_ERRORS) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_user_error_is_exit_2_and_one_line(command, tmp_path, capsys):
    argv, says = USER_ERRORS[command]
    names = {"missing": str(tmp_path / "no-such-model"), "out": str(tmp_path / "recipe.toml")}
    Path(names["out"]).write_text("# the user's own recipe\n")
    code = main([command, *(a.format(**names) for a in argv)])
    line = _one_line(capsys.readouterr().err)
    assert code == errors.EXIT_USAGE, line
    assert says.format(**names) in line, line


# command -> argv on a state written by a newer rmrun; commands that open no state are left out
# on purpose: check validates the recipe only (status reads the state), explain and init read no
# state, bench and verify-resume train into states of their own.
UNUSABLE = {
    "run": ("recipe", "run-identity"),
    "status": ("recipe", "run-identity"),
    "report": ("state", "run-identity"),
    "score": ("state", "export"),
    "eval": ("state", "export"),
}
OPENS_NO_STATE = {"check", "explain", "init", "bench", "verify-resume"}


def test_every_command_is_either_given_an_unusable_state_or_named_as_opening_none():
    assert sorted(set(UNUSABLE) | OPENS_NO_STATE) == sorted(COMMANDS) and not set(UNUSABLE) & OPENS_NO_STATE


@pytest.mark.parametrize("command", sorted(UNUSABLE))
def test_a_state_written_by_a_newer_rmrun_is_exit_3_and_left_alone(command, tmp_path, capsys):
    target, key = UNUSABLE[command]
    recipe = small_recipe(tmp_path)
    state = _newer_format_state(tmp_path / "state", key)
    before = sorted((p.relative_to(state), p.read_bytes()) for p in Path(state).rglob("*") if p.is_file())
    argv = {"recipe": [recipe], "state": [state]}[target]
    extra = [EVAL_DATA] if command in ("score", "eval") else []
    code = main(
        [command, *argv, *extra, "--out", str(tmp_path / "out")] if command == "report" else [command, *argv, *extra]
    )
    line = _one_line(capsys.readouterr().err)
    assert code == errors.EXIT_UNUSABLE and NEWER in line, line
    after = sorted((p.relative_to(state), p.read_bytes()) for p in Path(state).rglob("*") if p.is_file())
    assert after == before


# command -> the function its CLI module calls (a bug raised there must come out as exit 1)
INNER = {
    "run": "rmrun.run.commands.run",
    "check": "rmrun.run.commands.check",
    "status": "rmrun.run.commands.status",
    "explain": "rmrun.recipe.explain.explain_text",
    "init": "rmrun.run.starter.inspect_model",
    "verify-resume": "rmrun.run.verify.verify_resume",
    "score": "rmrun.serve.scoring.score",
    "eval": "rmrun.serve.scoring.evaluate",
    "report": "rmrun.report.report.report",
    "bench": "rmrun.bench.bench.bench",
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bug_inside_any_command_is_exit_1_with_its_traceback(command, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError(f"a bug in rmrun {command}")

    monkeypatch.setattr(INNER[command], broken)
    argv = {
        "run": [QUICKSTART],
        "check": [QUICKSTART],
        "status": [QUICKSTART],
        "explain": [],
        "init": [str(tmp_path), EVAL_DATA, "--out", str(tmp_path / "recipe.toml")],
        "verify-resume": [QUICKSTART],
        "score": [str(tmp_path), EVAL_DATA],
        "eval": [str(tmp_path), EVAL_DATA],
        "report": [str(tmp_path)],
        "bench": [QUICKSTART],
    }[command]
    code = main([command, *argv])
    err = capsys.readouterr().err
    assert code == errors.EXIT_FAILED, err
    assert "Traceback (most recent call last)" in err and f"RuntimeError: a bug in rmrun {command}" in err
