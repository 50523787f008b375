"""A run on rated responses (``data.format = "rated"``): the pairs the rule makes are the ones
trained and evaluated, the eval scores each prompt's pairs as a group, and ``rmrun eval``
makes the same pairs from the same rows with the export's rule.

The rows are the quickstart's pairs given ratings: each prompt has its chosen response (5),
its rejected one (2) and the next row's rejected one (1)."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import EVAL_DATA, TRAIN_DATA, rmrun, train_on_files

TRAIN_ROWS, EVAL_ROWS = 40, 10


def _text(messages) -> str:
    return "\n".join(m["content"] for m in messages)


def _rated(source: str, count: int, path) -> str:
    with open(source) as f:
        rows = [json.loads(line) for _, line in zip(range(count + 1), f)]
    with open(path, "w") as out:
        for row, following in zip(rows, rows[1:]):
            responses = [
                {"text": _text(row["chosen"]), "score": 5},
                {"text": _text(row["rejected"]), "score": 2},
                {"text": _text(following["rejected"]), "score": 1},
            ]
            out.write(json.dumps({"prompt": _text(row["context"]), "responses": responses}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rated")
    train = _rated(TRAIN_DATA, TRAIN_ROWS, root / "train.jsonl")
    evaluation = _rated(EVAL_DATA, EVAL_ROWS, root / "eval.jsonl")
    rule = 'format = "rated"\npair_rule = "all_pairs"\nmargins = "scores"\nmargin_scale = 0.25'
    return {**train_on_files(root, train=train, eval=evaluation, data=rule), "eval_file": evaluation}


def test_every_two_responses_rated_apart_are_a_pair(trained):
    # 3 responses rated apart: 3 pairs a prompt.
    assert f"tokenize train: {3 * TRAIN_ROWS} pairs" in trained["stdout"]
    final = trained["final"]
    assert final["pairs"] == 3 * EVAL_ROWS and final["groups"] == EVAL_ROWS
    assert 0 <= final["best_of_n_accuracy"] <= final["accuracy"] <= 1


def test_rmrun_eval_makes_the_same_pairs_with_the_exports_rule(trained):
    out = trained["root"] / "report.json"
    done = rmrun("eval", trained["export"], trained["eval_file"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    final = trained["final"]
    assert (report["pairs"], report["groups"]) == (final["pairs"], final["groups"])
    for key in ("accuracy", "best_of_n_accuracy", "loss", "margin"):
        assert math.isclose(report[key], final[key], abs_tol=1e-5), key


def test_the_plan_and_the_model_card_say_how_pairs_were_made(trained):
    from pathlib import Path

    card = (Path(trained["export"]) / "README.md").read_text()
    assert "plus 0.25 x the gap of the two responses' `score` ratings" in card
    assert "pairs from rated responses, `all_pairs` by `score`" in card
    contract = json.loads((Path(trained["export"]) / "rmrun.json").read_text())["data"]
    assert (contract["pair_rule"], contract["rating"], contract["margins"]) == ("all_pairs", "score", "scores")
    checked = rmrun("check", trained["recipe"])
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "pairs from rated responses, all_pairs by score" in checked.stdout
