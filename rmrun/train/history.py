"""A run's metric history in the store, and what checkpoints and hooks use of the run.

The per-step metric lines and eval results grow with the run; a checkpoint holds only
what it needs to continue. They go into the store as append-only pieces,
``history-<step>`` holding the lines after the previous piece up to <step>, committed
before the checkpoint at <step>, and never deleted by retention. A resume reassembles
them (first copy of each step wins: runs are exact, so copies are identical).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from rmrun.runtime.faults import fault_point
from rmrun.store.keys import HISTORY_PREFIX, history_key

if TYPE_CHECKING:
    from rmrun.runtime.dist import Rank
    from rmrun.store import CommittedState, Lease, StagedState, StateStore


class RunView(Protocol):
    """What checkpoints, history pieces and hooks use of a run (``rmrun.run.context.RunContext``
    is one; a test's stand-in need be no more)."""

    store: StateStore
    rank: Rank
    identity: dict
    history_end: int | None

    @property
    def held_lease(self) -> Lease: ...

    def stage(self, key: str, *, meta: dict) -> StagedState: ...

    def say(self, message: str) -> None: ...


def write_history_piece(ctx: RunView, trainer_state: dict) -> None:
    """Rank 0: commit the metric lines and evals since the last committed piece."""
    step = trainer_state["step"]
    key = history_key(step)
    if ctx.store.open_verified(key) is not None:  # an earlier attempt reached this step: the same lines
        return
    since = _history_end_before(ctx, step)
    piece = {
        "metrics": [m for m in trainer_state["metrics"] if since < m["step"] <= step],
        # An eval at ``since`` too: one a stop left unfinished is done after the resume from
        # there (a copy of one already in the piece ending there is read once: first wins).
        "evals": [e for e in trainer_state["evals"] if since <= e["step"] <= step],
    }
    staged = ctx.stage(key, meta={"step": step, "since": since})
    # key order kept: eval.json is compared byte for byte
    staged.write_bytes("history.json", json.dumps(piece).encode())
    fault_point("history_commit", step=step, rank=0)
    try:
        staged.commit()
    except BaseException:
        # The piece may have landed before the error (a lost reply): the next piece lists again.
        ctx.history_end = None
        raise
    ctx.history_end = max(step, ctx.history_end or 0)


def _history_end_before(ctx: RunView, step: int) -> int:
    """Where the last committed piece below ``step`` ends (0: none).

    ``ctx.history_end`` remembers the furthest end of any committed piece, so that a run
    lists the pieces (a LIST that grows with the run) once per process, not at every
    checkpoint. Where a piece reaches ``step`` or beyond (a resumed run behind the pieces
    of the run it replaces) the furthest end does not answer, and the store is listed.
    """
    if ctx.history_end is not None and ctx.history_end < step:
        return ctx.history_end
    ends = [int(k[len(HISTORY_PREFIX) :]) for k in ctx.store.committed_keys(HISTORY_PREFIX)]
    ctx.history_end = max(ends, default=0)
    return max([end for end in ends if end < step], default=0)


def committed_history(store: StateStore) -> Iterator[tuple[str, CommittedState, dict]]:
    """(key, state, piece) of every committed history piece, in step order."""
    for key in sorted(store.committed_keys(HISTORY_PREFIX)):
        state = store.open_unverified(key)
        if state is not None:
            yield key, state, json.loads(state.read_bytes("history.json"))


def read_history(store: StateStore, *, through: int) -> tuple[list, list]:
    """Metric lines of steps 1..through and the evals up to it, from the committed pieces.
    A gap (a piece lost or quarantined) is a ValueError: the checkpoint cannot continue."""
    metrics: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for key, _, piece in committed_history(store):
        if int(key[len(HISTORY_PREFIX) :]) > through:  # a later attempt's, beyond this checkpoint
            continue
        for line in piece["metrics"]:
            if line["step"] <= through:
                metrics.setdefault(line["step"], line)
        for result in piece["evals"]:
            if result["step"] <= through:
                evals.setdefault(result["step"], result)
    missing = sorted(set(range(1, through + 1)) - metrics.keys())
    if missing:
        raise ValueError(f"the metric history misses {len(missing)} step(s) (first: {missing[0]}) of 1..{through}")
    return [metrics[s] for s in sorted(metrics)], [evals[s] for s in sorted(evals)]
