"""A checkpoint holds only what it needs to continue: its size does not grow with the step count.

The per-step metric lines and eval results go into append-only ``history-<step>`` pieces in
the store; a resume reassembles them (tests/e2e/test_resume.py and tests/e2e/test_crash_points.py
check that the metrics after a resume stay byte-identical).
"""

from __future__ import annotations

import json

import pytest

from rmrun.store import StateStore
from rmrun.store.keys import HISTORY_PREFIX
from rmrun.train.history import read_history
from tests.helpers import rmrun, small_recipe


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    recipe = small_recipe(root, train_pairs=96)
    done = rmrun(
        "run",
        recipe,
        "--set",
        "schedule.max_epochs=1",
        "--set",
        "schedule.batch_size=4",
        "--set",
        "checkpoint.interval_steps=10",
        "--set",
        "checkpoint.keep=5",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return StateStore(str(root / "state")), root


def _sizes(store, key):
    return {f["path"]: f["size"] for f in store.open_unverified(key).manifest["files"]}


def test_checkpoint_bytes_do_not_grow_with_the_step_count(store):
    s, _ = store
    at_10, at_20 = _sizes(s, "ckpt-0000000010"), _sizes(s, "ckpt-0000000020")
    assert set(at_10) == set(at_20)
    # Every file but the RNG streams (whose JSON digits vary) has the same size at step 10 and 20.
    assert {p: n for p, n in at_10.items() if not p.startswith("rng/")} == {
        p: n for p, n in at_20.items() if not p.startswith("rng/")
    }
    trainer = json.loads(s.open_unverified("ckpt-0000000020").read_bytes("trainer.json"))
    assert trainer["metrics"] == [] and trainer["evals"] == [] and trainer["history_through"] == 20


def test_the_pieces_reassemble_the_exported_metrics(store):
    s, root = store
    assert s.committed_keys(HISTORY_PREFIX) == ["history-0000000010", "history-0000000020", "history-0000000024"]
    metrics, evals = read_history(s, through=24)
    exported = (root / "state" / "export" / "metrics.jsonl").read_text()
    assert "".join(json.dumps(line, sort_keys=True) + "\n" for line in metrics) == exported
    assert [e["step"] for e in evals] == [24]
    assert [m["step"] for m in read_history(s, through=20)[0]] == list(range(1, 21))


def test_a_lost_piece_is_a_checkpoint_that_cannot_continue(store, tmp_path):
    import shutil

    s, root = store
    copy = tmp_path / "state"
    shutil.copytree(root / "state", copy)
    shutil.rmtree(copy / "states" / "history-0000000010")
    with pytest.raises(ValueError, match="misses 10 step"):
        read_history(StateStore(str(copy)), through=20)
