"""What a checkpoint holds besides the booster's files, in-process (rmrun/train/checkpoint.py):

- the RNG streams, captured as JSON-safe data and restored to draw the same numbers;
- checkpoint keys, zero-padded so the store's name order is the step order;
- the metric history as append-only ``history-<step>`` pieces: each holds the lines since the
  previous piece, a resume reassembles them (first copy of a step wins), and a gap is a
  ValueError because that checkpoint cannot continue;
- where the last piece ended is listed from the store once per process, not at every
  checkpoint, and the remembered end writes the same pieces as a listing would.

The pieces are written through a stand-in for the run context over a local StateStore.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rmrun.store import StateStore, StoreError
from rmrun.store.keys import CHECKPOINT_PREFIX, HISTORY_PREFIX, checkpoint_key
from rmrun.train.checkpoint import capture_rng, restore_rng
from rmrun.train.history import committed_history, read_history, write_history_piece

# ---------------------------------------------------------------- RNG streams


def draws() -> tuple:
    return (
        random.random(),
        random.getrandbits(64),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (4,)).tolist(),
    )


def test_restored_streams_draw_the_same_numbers_after_a_json_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state, which must survive too
    saved = json.loads(json.dumps(capture_rng()))  # a checkpoint stores it as JSON
    expected = draws()
    draws()
    restore_rng(saved)
    assert draws() == expected


def test_the_captured_streams_are_python_numpy_and_torch():
    state = capture_rng()
    assert {"python", "numpy", "torch"} <= set(state)
    assert ("cuda" in state) is torch.cuda.is_available()
    assert json.loads(json.dumps(state)) == state


def test_negative_control_without_the_restore_the_draws_differ():
    saved = capture_rng()
    expected = draws()
    assert draws() != expected
    restore_rng(saved)
    assert draws() == expected


# ---------------------------------------------------------------- keys


def test_checkpoint_keys_are_zero_padded_so_name_order_is_step_order():
    assert checkpoint_key(4) == "ckpt-0000000004"
    assert checkpoint_key(1234567890) == "ckpt-1234567890"
    steps = [100, 9, 10, 1]
    assert [int(k[len(CHECKPOINT_PREFIX) :]) for k in sorted(map(checkpoint_key, steps))] == sorted(steps)


# ---------------------------------------------------------------- history pieces


def process_context(store: StateStore, lease) -> SimpleNamespace:
    """What write_history_piece uses of the run context: the store, stage(), and the end of
    the history pieces it remembers, unknown in a process that has just started."""
    return SimpleNamespace(
        store=store,
        lease=lease,
        stage=lambda key, *, meta: store.stage(key, lease=lease, meta=meta),
        history_end=None,
    )


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.delenv("RMRUN_FAULTS", raising=False)
    store = StateStore(str(tmp_path / "state"))
    lease = store.acquire_lease(holder="test")
    yield process_context(store, lease)
    store.release(lease)


def metric(step: int, **extra) -> dict:
    return {"step": step, "loss": 1.0 / step, **extra}


def trainer_state(step: int, *, eval_steps=()) -> dict:
    """What the trainer holds at ``step``: every metric line so far and the evals made."""
    return {
        "step": step,
        "metrics": [metric(s) for s in range(1, step + 1)],
        "evals": [{"step": s, "accuracy": 0.5} for s in eval_steps if s <= step],
    }


def test_each_piece_holds_the_lines_since_the_previous_piece(ctx):
    write_history_piece(ctx, trainer_state(3))
    write_history_piece(ctx, trainer_state(6, eval_steps=(5,)))
    pieces = [(key, state.manifest["meta"], piece) for key, state, piece in committed_history(ctx.store)]
    assert [key for key, _, _ in pieces] == ["history-0000000003", "history-0000000006"]
    assert [(meta["since"], meta["step"]) for _, meta, _ in pieces] == [(0, 3), (3, 6)]
    assert [[m["step"] for m in piece["metrics"]] for _, _, piece in pieces] == [[1, 2, 3], [4, 5, 6]]
    assert [[e["step"] for e in piece["evals"]] for _, _, piece in pieces] == [[], [5]]


def test_the_pieces_reassemble_the_history_through_a_checkpoint(ctx):
    for step in (3, 6, 8):
        write_history_piece(ctx, trainer_state(step, eval_steps=(5, 8)))
    metrics, evals = read_history(ctx.store, through=8)
    assert metrics == [metric(s) for s in range(1, 9)]
    assert [e["step"] for e in evals] == [5, 8]
    metrics, evals = read_history(ctx.store, through=6)  # the piece at 8 is beyond that checkpoint
    assert [m["step"] for m in metrics] == list(range(1, 7)) and [e["step"] for e in evals] == [5]


def test_a_piece_written_again_for_the_same_step_is_not_duplicated(ctx):
    write_history_piece(ctx, trainer_state(3))
    write_history_piece(ctx, trainer_state(3))  # an earlier attempt reached this step: the same lines
    assert ctx.store.committed_keys(HISTORY_PREFIX) == ["history-0000000003"]


def test_the_first_copy_of_a_step_wins(ctx):
    """A resumed run from step 3 commits a piece at 5 besides an older piece at 6 that also
    covers steps 4 and 5: the lower key is read first."""
    write_history_piece(ctx, trainer_state(3))
    write_history_piece(ctx, trainer_state(6))
    resumed = trainer_state(5)
    resumed["metrics"] = [metric(s, copy="resumed") for s in range(1, 6)]
    write_history_piece(ctx, resumed)
    metrics, _ = read_history(ctx.store, through=6)
    assert [m.get("copy") for m in metrics] == [None, None, None, "resumed", "resumed", None]


def test_a_lost_piece_is_a_gap_that_cannot_continue(ctx):
    for step in (3, 6):
        write_history_piece(ctx, trainer_state(step))
    ctx.store.delete("history-0000000003", lease=ctx.lease)
    with pytest.raises(ValueError, match=r"the metric history misses 3 step\(s\) \(first: 1\) of 1\.\.6"):
        read_history(ctx.store, through=6)
    assert [m["step"] for m in read_history(ctx.store, through=0)[0]] == []


def test_a_checkpoint_between_pieces_is_a_gap(ctx):
    """Pieces end at checkpoints: reading through a step no piece ends at misses its lines."""
    for step in (3, 6):
        write_history_piece(ctx, trainer_state(step))
    with pytest.raises(ValueError, match=r"misses 1 step\(s\) \(first: 4\) of 1\.\.4"):
        read_history(ctx.store, through=4)


def test_no_pieces_is_a_gap_from_the_first_step(tmp_path):
    with pytest.raises(ValueError, match=r"misses 2 step\(s\) \(first: 1\) of 1\.\.2"):
        read_history(StateStore(str(tmp_path / "empty")), through=2)


# ---------------------------------------------------------------- where the last piece ended


@pytest.fixture
def history_listings(ctx, monkeypatch):
    """The store's listings of the history pieces, counted as write_history_piece makes them."""
    listings = []
    committed_keys = ctx.store.committed_keys

    def counted(prefix: str) -> list[str]:
        if prefix == HISTORY_PREFIX:
            listings.append(prefix)
        return committed_keys(prefix)

    monkeypatch.setattr(ctx.store, "committed_keys", counted)
    return listings


def pieces(store: StateStore) -> list[tuple[str, int, list[int]]]:
    """(key, since, metric steps) of every committed piece, in step order."""
    return [
        (key, state.manifest["meta"]["since"], [m["step"] for m in piece["metrics"]])
        for key, state, piece in committed_history(store)
    ]


@pytest.mark.parametrize("num_checkpoints", [3, 6])
def test_one_process_lists_the_pieces_once_however_many_checkpoints(ctx, history_listings, num_checkpoints):
    for step in range(4, 4 * num_checkpoints + 1, 4):
        write_history_piece(ctx, trainer_state(step))
    assert len(history_listings) == 1
    assert ctx.history_end == 4 * num_checkpoints


@pytest.mark.parametrize("num_checkpoints", [3, 6])
def test_negative_control_forgetting_the_end_lists_at_every_checkpoint(ctx, history_listings, num_checkpoints):
    """The count above is of real listings: without the remembered end there is one per checkpoint."""
    for step in range(4, 4 * num_checkpoints + 1, 4):
        ctx.history_end = None  # as if every checkpoint ran in a new process
        write_history_piece(ctx, trainer_state(step))
    assert len(history_listings) == num_checkpoints


def test_the_pieces_hold_every_line_once_across_a_resume(ctx, history_listings):
    """A killed run committed pieces at 3, 6 and 9 but not the checkpoint at 9; the resumed
    process (nothing remembered) starts from the checkpoint at 6 and goes on to 15."""
    for step in (3, 6, 9):
        write_history_piece(ctx, trainer_state(step))
    resumed = process_context(ctx.store, ctx.lease)
    for step in (9, 12, 15):
        write_history_piece(resumed, trainer_state(step))
    assert len(history_listings) == 2  # one per process, before the reads below
    found = pieces(ctx.store)
    assert [since for _, since, _ in found] == [0, 3, 6, 9, 12]
    assert [s for _, _, steps in found for s in steps] == list(range(1, 16))
    assert read_history(ctx.store, through=15)[0] == [metric(s) for s in range(1, 16)]


# Checkpoint steps of a run, then of the run resumed (in a new process) from an earlier step,
# with the killed run's pieces beyond the resumed step still in the store.
RESUMES = {
    "the same cadence": ((3, 6, 9), (9, 12, 15)),
    "a new cadence behind the old pieces": ((4, 8, 12), (7, 10, 13, 16)),
    "a resume from the start": ((5, 10), (2, 4, 6, 8, 10, 12)),
    "repeated steps": ((3, 3, 6), (6, 6, 7, 7)),
}


@pytest.mark.parametrize("run,resumed", RESUMES.values(), ids=RESUMES.keys())
def test_the_remembered_end_writes_the_pieces_a_listing_writes(tmp_path, monkeypatch, run, resumed):
    """Every piece, its key, where it starts and its lines, as when each checkpoint lists the store."""
    monkeypatch.delenv("RMRUN_FAULTS", raising=False)

    def write(name: str, *, remember: bool) -> list:
        store = StateStore(str(tmp_path / name))
        lease = store.acquire_lease(holder="test")
        for steps in (run, resumed):
            process = process_context(store, lease)
            for step in steps:
                if not remember:
                    process.history_end = None
                write_history_piece(process, trainer_state(step, eval_steps=(2, 5, 9)))
        return pieces(store)

    assert write("remembered", remember=True) == write("listed", remember=False)


@pytest.mark.parametrize("landed", [False, True], ids=["lost", "landed before the error"])
def test_a_failed_commit_forgets_the_end(ctx, monkeypatch, landed):
    """A commit that raises leaves no end remembered: whether or not its piece reached the
    store, the next piece starts where the committed ones end."""
    write_history_piece(ctx, trainer_state(3))
    stage = ctx.stage

    def failing_stage(key, *, meta):
        staged = stage(key, meta=meta)
        commit = staged.commit

        def failing_commit(**kwargs):
            if landed:
                commit(**kwargs)
            raise StoreError("the store did not answer")

        staged.commit = failing_commit
        return staged

    monkeypatch.setattr(ctx, "stage", failing_stage)
    with pytest.raises(StoreError, match="did not answer"):
        write_history_piece(ctx, trainer_state(6))
    assert ctx.history_end is None
    monkeypatch.setattr(ctx, "stage", stage)
    write_history_piece(ctx, trainer_state(9))
    expected_since = 6 if landed else 3
    assert pieces(ctx.store)[-1] == ("history-0000000009", expected_since, list(range(expected_since + 1, 10)))
    assert [s for _, _, steps in pieces(ctx.store) for s in steps] == list(range(1, 10))
