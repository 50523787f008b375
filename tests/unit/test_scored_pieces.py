"""Scoring in committed pieces (rmrun/run/scored.py): a stop keeps every scored piece, the next
start scores only the missing ones, and the metrics equal those of one start that scored them all."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rmrun.run import scored
from rmrun.run.context import RunContext
from rmrun.runtime.dist import Rank
from rmrun.store import StateStore
from rmrun.store.keys import SCORED_PREFIX
from rmrun.train.loss import NUM_SUMS


class Data:
    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float32)

    def __len__(self):
        return len(self.values)

    def subset(self, indices):
        return Data(self.values[indices])


class Trainer:
    """Sums that are not associative in float32 (a thousandth plus large values), so a wrong
    order or a lost piece shows; ``stop_after`` raises as a stop signal would."""

    def __init__(self, stop_after: int | None = None):
        self.state = SimpleNamespace(step=7)
        self.scored: list[int] = []
        self.stop_after = stop_after

    def eval_sums(self, data, *, should_stop=None):
        if should_stop is not None and should_stop():  # as Trainer.eval_sums, before a batch
            from rmrun.train.trainer import EvalStopped

            raise EvalStopped("stopped")
        if self.stop_after is not None and len(self.scored) == self.stop_after:
            raise KeyboardInterrupt
        self.scored.append(len(data))
        s = torch.zeros(NUM_SUMS)  # the first sum is the one checked; the rest stay 0
        for v in data.values:
            s[:1] += torch.tensor([float(v)])
        correct = torch.tensor([float(v % 2) for v in data.values])  # each pair's own, laid end to end
        return {"sums": s, "buckets": torch.tensor([[float(len(data)), 1.0]]), "correct": correct}

    def eval_result(self, sums, *, pairs, data=None):
        assert len(sums["correct"]) == pairs == len(data)
        return {
            "pairs": pairs,
            "sum": float(sums["sums"][0]),
            "buckets": sums["buckets"].tolist(),
            "correct": sums["correct"].tolist(),
        }


def _context(root: str) -> RunContext:
    store = StateStore(root)
    return RunContext(
        store=store,
        lease=store.acquire_lease(holder="test"),
        rank=Rank(rank=0, world_size=1, local_rank=0, cuda=False),
        recipe_path="test",
        recipe_text="",
        identity={"fingerprint": "test"},
        log=lambda message: None,
    )


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return Data(rng.normal(size=5000) * 1e6 + 1e-3)


def test_a_stopped_scoring_resumes_from_its_pieces_and_gives_the_same_bits(tmp_path, data, monkeypatch):
    monkeypatch.setattr(scored, "PIECE_PAIRS", 1000)
    whole = scored.score_in_pieces(_context(str(tmp_path / "a")), Trainer(), data, what="stats", fault="stats_piece")
    assert whole["pairs"] == 5000 and whole["buckets"] == [[5000.0, 5.0]]

    ctx = _context(str(tmp_path / "b"))
    stopped = Trainer(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        scored.score_in_pieces(ctx, stopped, data, what="stats", fault="stats_piece")
    assert len(ctx.store.committed_keys(SCORED_PREFIX)) == 3
    ctx.store.release(ctx.lease)  # the stopped start is gone
    resumed = Trainer()
    ctx = _context(str(tmp_path / "b"))
    again = scored.score_in_pieces(ctx, resumed, data, what="stats", fault="stats_piece")
    assert resumed.scored == [1000, 1000], "only the two missing pieces are scored again"
    assert math.copysign(1, again["sum"]) == math.copysign(1, whole["sum"]) and again == whole

    # Negative control: the pieces in another order give other bits, so the check above can fail.
    pieces = [data.subset(np.arange(i, i + 1000)) for i in range(0, 5000, 1000)]
    sums = [Trainer().eval_sums(p)["sums"] for p in pieces]
    forward, backward = sums[0], sums[-1]
    for s in sums[1:]:
        forward = forward + s
    for s in reversed(sums[:-1]):
        backward = backward + s
    assert float(forward[0]) == whole["sum"] and float(backward[0]) != whole["sum"]

    scored.forget(ctx, "stats")
    assert ctx.store.committed_keys(SCORED_PREFIX) == []


def test_one_piece_scores_the_data_itself(tmp_path, data):
    data = data.subset(np.arange(scored.PIECE_PAIRS))
    trainer = Trainer()
    result = scored.score_in_pieces(_context(str(tmp_path)), trainer, data, what="stats", fault="stats_piece")
    assert trainer.scored == [scored.PIECE_PAIRS] and result["sum"] == float(Trainer().eval_sums(data)["sums"][0])


def test_an_eval_stopped_between_batches_keeps_its_pieces_and_one_piece_commits_nothing(tmp_path, data, monkeypatch):
    from rmrun.train.trainer import EvalStopped

    monkeypatch.setattr(scored, "PIECE_PAIRS", 1000)
    whole = scored.score_in_pieces(_context(str(tmp_path / "a")), Trainer(), data, what="eval", fault="eval_piece")
    ctx = _context(str(tmp_path / "b"))
    asked = []

    def stop_in_piece_three() -> bool:
        asked.append(1)
        return len(asked) == 3

    with pytest.raises(EvalStopped):
        scored.score_in_pieces(
            ctx, Trainer(), data, what="eval", fault="eval_piece", commit_single=False, should_stop=stop_in_piece_three
        )
    assert len(ctx.store.committed_keys(scored.scored_prefix("eval"))) == 2
    resumed = Trainer()
    again = scored.score_in_pieces(ctx, resumed, data, what="eval", fault="eval_piece", commit_single=False)
    assert resumed.scored == [1000, 1000, 1000] and again == whole

    # an eval set of one piece: nothing is committed (a stop loses that piece only)
    one = _context(str(tmp_path / "c"))
    small = data.subset(np.arange(500))
    result = scored.score_in_pieces(one, Trainer(), small, what="eval", fault="eval_piece", commit_single=False)
    assert result["pairs"] == 500 and one.store.committed_keys(SCORED_PREFIX) == []


def test_a_piece_stored_with_other_sums_is_scored_again(tmp_path, data, monkeypatch):
    """A piece kept by a version that summed other fields (another shape) is not added in."""
    monkeypatch.setattr(scored, "PIECE_PAIRS", 1000)
    ctx = _context(str(tmp_path))
    key = scored.scored_piece_key("stats", 7, 0, 5)
    staged = ctx.stage(key, meta={})
    staged.write_bytes(
        "sums.json", json.dumps(scored._encoded({"sums": torch.zeros(3), "buckets": torch.zeros(1, 2)})).encode()
    )
    staged.commit()
    trainer = Trainer()
    result = scored.score_in_pieces(ctx, trainer, data, what="stats", fault="stats_piece")
    assert trainer.scored == [1000] * 5 and result == scored.score_in_pieces(
        _context(str(tmp_path / "fresh")), Trainer(), data, what="stats", fault="stats_piece"
    )
