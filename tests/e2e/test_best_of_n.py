"""Best-of-N evaluation: rows with one chosen against several rejected responses (RewardBench 2's
best-of-4 rows), scored in the training-time eval, by ``rmrun eval`` and by ``rmrun score``.

One small pairwise run is trained for the module on the quickstart's pairs; its eval file holds
rows of one chosen and three rejected responses, in two subsets. The best-of-N accuracy the run
commits must be the share of rows whose every pair ``rmrun score`` finds right, and ``rmrun
eval`` must report the same numbers; the pairwise accuracy over the same pairs is the negative
control (it counts a row with one pair right as partly right).
"""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import EVAL_DATA, TRAIN_DATA, rmrun, train_on_files

ROWS = 12  # eval rows, 3 rejected responses each
TOLERANCE = 1e-5


def _text(messages) -> str:
    return "\n".join(m["content"] for m in messages)


def _rows(path: str, count: int) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(count), f)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("best_of_n")
    train = root / "train.jsonl"
    with open(train, "w") as out:
        for row in _rows(TRAIN_DATA, 64):
            out.write(
                json.dumps(
                    {
                        "prompt": _text(row["context"]),
                        "chosen": _text(row["chosen"]),
                        "rejected": _text(row["rejected"]),
                    }
                )
                + "\n"
            )
    source = _rows(EVAL_DATA, ROWS + 2)
    bench = root / "bench.jsonl"
    with open(bench, "w") as out:
        for i in range(ROWS):
            row = source[i]
            rejected = [_text(source[i + k]["rejected"]) for k in range(3)]  # its own, and two worse answers
            out.write(
                json.dumps(
                    {
                        "prompt": _text(row["context"]),
                        "chosen": [_text(row["chosen"])],
                        "rejected": rejected,
                        "subset": "first" if i < ROWS // 2 else "second",
                    }
                )
                + "\n"
            )
    trained = train_on_files(root, train=str(train), eval=str(bench), data='format = "pairwise"')
    return {**trained, "bench": str(bench)}


def _scored(trained) -> list[dict]:
    out = trained["root"] / "scores.jsonl"
    done = rmrun("score", trained["export"], trained["bench"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_run_scores_each_row_as_one_group_of_its_pairs(trained):
    final = trained["final"]
    assert final["pairs"] == 3 * ROWS and final["groups"] == ROWS
    lines = _scored(trained)
    assert [line["row"] for line in lines] == list(range(ROWS))  # one line per input row
    assert all(len(line["pairs"]) == 3 for line in lines)
    margins = [p["margin"] for line in lines for p in line["pairs"]]
    beats_all = [all(p["margin"] > 0 for p in line["pairs"]) for line in lines]
    assert [line["chosen_beats_all"] for line in lines] == beats_all
    assert final["best_of_n_accuracy"] == sum(beats_all) / ROWS
    pairwise = sum(m > 0 for m in margins) / len(margins)
    assert final["accuracy"] == pairwise
    # The negative control: the rows' pairs counted one by one give another number (a random-ish
    # tiny model gets some but not all of a row's three pairs right).
    assert final["best_of_n_accuracy"] != final["accuracy"]
    assert f"best of N {final['best_of_n_accuracy']:.3f} on {ROWS} rows" in trained["stdout"]


def test_each_subset_has_its_accuracy_and_best_of_n(trained):
    final = trained["final"]
    lines = _scored(trained)
    subsets = final["subsets"]
    assert set(subsets) == {"first", "second"}
    for name in subsets:
        mine = [line for line in lines if line["subset"] == name]
        pairs = [p for line in mine for p in line["pairs"]]
        assert subsets[name]["pairs"] == len(pairs) and subsets[name]["groups"] == len(mine)
        assert subsets[name]["accuracy"] == sum(p["margin"] > 0 for p in pairs) / len(pairs)
        assert subsets[name]["best_of_n_accuracy"] == sum(line["chosen_beats_all"] for line in mine) / len(mine)


def test_rmrun_eval_reports_what_the_run_committed(trained):
    out = trained["root"] / "report.json"
    done = rmrun("eval", trained["export"], trained["bench"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    final = trained["final"]
    assert report["groups"] == final["groups"]
    for key in ("accuracy", "best_of_n_accuracy", "loss"):
        assert math.isclose(report[key], final[key], abs_tol=TOLERANCE), key
    for name, entry in final["subsets"].items():
        mine = report["subsets"][name]
        assert (mine["pairs"], mine["groups"]) == (entry["pairs"], entry["groups"])
        assert math.isclose(mine["best_of_n_accuracy"], entry["best_of_n_accuracy"])
    assert "best of N" in done.stdout


def test_the_model_card_lists_the_best_of_n_accuracy(trained):
    from pathlib import Path

    card = (Path(trained["export"]) / "README.md").read_text()
    assert f"| best_of_n_accuracy | {trained['final']['best_of_n_accuracy']:.4f} |" in card
    assert "| first: best_of_n_accuracy" in card
