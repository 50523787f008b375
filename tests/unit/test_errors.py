"""The CLI in-process, one command per kind of failure: each exit code comes from the one map
in rmrun.errors (a user error 2, an unusable state 3, a bug 1 with its traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmrun import errors
from rmrun.cli.main import main
from rmrun.recipe import RecipeError
from rmrun.store.errors import NewerFormat, StoreError, StoreUnreachable

BAD_RECIPES = Path(__file__).resolve().parents[1] / "recipes_bad"


def test_a_bad_recipe_key_is_a_usage_error(capsys):
    code = main(["check", str(BAD_RECIPES / "unknown_key.toml")])
    err = capsys.readouterr().err
    assert code == errors.EXIT_USAGE == errors.exit_code(RecipeError(["x"]))
    assert err.startswith("rmrun: ") and "Traceback" not in err


def test_status_of_a_state_in_a_newer_format_is_an_unusable_state(tmp_path, capsys):
    commit = tmp_path / "states" / "run-identity" / "COMMIT"
    commit.parent.mkdir(parents=True)
    commit.write_text(json.dumps({"format": 2, "attempt": "g1-x", "manifest_sha256": "0" * 64}))
    code = main(["status", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == errors.EXIT_UNUSABLE == errors.exit_code(NewerFormat("newer"))
    assert "written by a newer rmrun (format 2" in err and "Traceback" not in err


def test_a_bug_is_exit_1_with_its_traceback(monkeypatch, capsys):
    def broken(recipe_path, *, overrides):
        raise RuntimeError("a bug in rmrun")

    monkeypatch.setattr("rmrun.run.commands.check", broken)
    code = main(["check", str(BAD_RECIPES / "unknown_key.toml")])
    err = capsys.readouterr().err
    assert code == errors.EXIT_FAILED == errors.exit_code(RuntimeError("x"))
    assert "Traceback (most recent call last)" in err and "RuntimeError: a bug in rmrun" in err


@pytest.mark.parametrize(
    "exc,requeue,code",
    [
        (KeyboardInterrupt(), None, 130),
        (StoreError("x"), None, 3),
        (StoreUnreachable("x"), None, 3),  # outside a run there is nothing to requeue
        (StoreUnreachable("x"), 99, 99),  # in a run: the recipe's run.preempted_exit_code
        (errors.UsageError(["x"]), None, 2),
        (errors.StateUnusable(["x"]), None, 3),
        (errors.StoppedBeforeStart("x"), None, 75),
        (errors.Worded(StoreUnreachable("x"), ["y"], requeue=99), None, 99),
        (BrokenPipeError(), None, 0),
        (ValueError("x"), None, 1),
    ],
)
def test_the_exit_code_map(exc, requeue, code):
    assert errors.exit_code(exc, requeue=requeue) == code


def test_a_stop_signal_requeues_unless_it_is_ctrl_c():
    import signal

    from rmrun.runtime.process import Stopped

    assert errors.exit_code(Stopped(signal.SIGTERM, "before x"), requeue=99) == 99
    assert errors.exit_code(Stopped(signal.SIGTERM, "before x")) == errors.EXIT_PREEMPTED
    assert errors.exit_code(Stopped(signal.SIGINT, "before x"), requeue=99) == errors.EXIT_INTERRUPTED
    assert errors.message(Stopped(signal.SIGTERM, "before x"), requeue=99) == [
        "stopped by SIGTERM before x; everything committed is intact; exit 99: run the same command again to resume"
    ]
