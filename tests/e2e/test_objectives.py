"""Per-pair margins from the data and reward centering in whole runs: a run with both, killed
mid-epoch and resumed, is bit-identical to the uninterrupted one (weights, metrics.jsonl,
eval.json); the plain run on the same rows trains otherwise (the negative control); the
objective is in `rmrun check`'s output, the export's rmrun.json and its model card.

The harness is tests/e2e/test_resume.py's (1 process, local state, 26 steps, a checkpoint
every 4); its rows get ``score_chosen`` / ``score_rejected`` ratings, a pure function of the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import RESUME_RECIPE, rmrun
from tests.resume_harness import EXIT_OK, ONE_LOCAL, Harness, assert_identical, differing_tensors, read_export


def _rated(source: Path, target: Path) -> Path:
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        row["score_chosen"], row["score_rejected"] = 5 + i % 4, 1 + (i * 7) % 3
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return target


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("objectives"))
    h.train = _rated(h.train, h.workdir / "rated-train.jsonl")
    h.eval = _rated(h.eval, h.workdir / "rated-eval.jsonl")
    return h


OBJECTIVE = ("data.margins=scores", "data.margin_scale=0.5", "loss.center_coef=0.05")


@pytest.fixture(scope="module")
def uninterrupted(harness):
    run = harness.new_run(ONE_LOCAL, "objective")
    harness.run(run, sets=OBJECTIVE, expect=EXIT_OK)
    return run


def test_killed_and_resumed_with_margins_and_centering_is_bit_identical(harness, uninterrupted):
    run = harness.new_run(ONE_LOCAL, "objective-killed")
    harness.run(run, sets=OBJECTIVE, faults="kill@step:6", expect="killed")
    result = harness.run(run, sets=OBJECTIVE, expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert_identical(read_export(uninterrupted.export), read_export(run.export))


def test_the_objective_changes_training_and_is_logged_and_exported(harness, uninterrupted):
    objective = read_export(uninterrupted.export)
    plain_run = harness.new_run(ONE_LOCAL, "plain")
    harness.run(plain_run, expect=EXIT_OK)
    plain = read_export(plain_run.export)
    # the negative control: the same rows with the margins and centering off train other weights
    assert differing_tensors(objective, plain), "margins and centering changed nothing"
    first, first_plain = objective.metric_lines()[0], plain.metric_lines()[0]
    assert first["loss"] != first_plain["loss"]
    assert "center_loss" in first and "center_loss" not in first_plain
    assert all(line["center_loss"] >= 0 for line in objective.metric_lines())

    contract = json.loads((Path(uninterrupted.export) / "rmrun.json").read_text())
    assert contract["loss"] == {
        "name": "log_sig",
        "margin": 0.0,
        "margins": "scores",
        "margin_scale": 0.5,
        "center_coef": 0.05,
    }
    assert json.loads((Path(plain_run.export) / "rmrun.json").read_text())["loss"] == {"name": "log_sig", "margin": 0.0}
    card = (Path(uninterrupted.export) / "README.md").read_text()
    assert (
        "Objective: `log_sig` pairwise loss, margin 0 plus 0.5 x (`score_chosen` - `score_rejected`) of each row; "
        "reward centering, 0.05 x mean((r_c + r_r)^2)." in card
    ), card


def test_check_states_the_objective_and_names_a_row_without_scores(harness):
    data = ("--set", f"data.train={harness.train}", "--set", f"data.eval={harness.eval}")
    done = rmrun("check", str(RESUME_RECIPE), *data, *(a for o in OBJECTIVE for a in ("--set", o)))
    assert done.returncode == 0, done.stderr
    assert (
        "objective: log_sig pairwise loss, margin 0 plus 0.5 x (score_chosen - score_rejected) of each row; "
        "reward centering, 0.05 x mean((r_c + r_r)^2)\n" in done.stdout
    ), done.stdout
    unrated = rmrun("check", str(RESUME_RECIPE), "--set", "data.margins=scores")
    assert unrated.returncode == 2 and "Traceback" not in unrated.stderr, unrated.stderr
    assert (
        'quickstart_train.jsonl:1: data.margins = "scores" needs a "score_chosen" field, and the row has none'
        in unrated.stderr
    ), unrated.stderr
