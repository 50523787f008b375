"""Scoring a data set in committed pieces: the reward statistics the export states.

The data set is cut into contiguous pieces of at most :data:`PIECE_PAIRS` pairs
(``piece_bounds``: a pure function of the count). Every rank scores its share of each piece
(``Trainer.eval_sums``), and rank 0 commits the piece's sums as a state of its own
(``scored-<what>-<step>-<i>-of-<n>``, each float32 kept exactly as its hex), so a stop signal
or a kill keeps every scored piece and the next start scores only the missing ones. The sums
are added in piece order, so the metrics are bit-identical to those of a start that scored
every piece; a data set of one piece gives exactly ``Trainer.evaluate``'s numbers. The pieces
are deleted once the result they make is committed (:func:`forget`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rmrun.store.keys import scored_piece_key, scored_prefix
from rmrun.train.loss import NUM_SUMS

if TYPE_CHECKING:
    from collections.abc import Callable

    from rmrun.train.history import RunView
    from rmrun.train.trainer import Trainer

PIECE_PAIRS = 2048  # a stop loses at most this many pairs' scoring


def _encoded(sums: dict) -> dict:
    return {
        name: {"shape": list(t.shape), "hex": [float(v).hex() for v in t.flatten().tolist()]}
        for name, t in sums.items()
    }


def _decoded(stored: dict) -> dict:
    import torch

    return {
        name: torch.tensor([float.fromhex(v) for v in entry["hex"]], dtype=torch.float32).reshape(entry["shape"])
        for name, entry in stored.items()
    }


def score_in_pieces(
    ctx: RunView,
    trainer: Trainer,
    data,
    *,
    what: str,
    fault: str,
    commit_single: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Collective: the eval metrics of ``data``, scored piece by piece (``what``: part of the
    pieces' keys, e.g. "stats"; ``fault``: the fault point reached before each commit).

    ``commit_single`` False: a data set of one piece is scored without committing it (a
    stop then loses at most that piece). ``should_stop``: see ``Trainer.eval_sums``."""
    import numpy as np

    from rmrun.data.pieces import piece_bounds
    from rmrun.runtime.collective import broadcast
    from rmrun.runtime.faults import fault_point

    n = len(data)
    num_pieces = max(1, -(-n // PIECE_PAIRS))
    step = trainer.state.step
    total = None
    for i, (start, stop) in enumerate(piece_bounds(n, num_pieces)):
        key = scored_piece_key(what, step, i, num_pieces)
        committed = ctx.store.open_verified(key) if ctx.rank.is_main else None
        stored = broadcast(json.loads(committed.read_bytes("sums.json")) if committed is not None else None)
        if stored is not None and (stored.get("sums", {}).get("shape") != [NUM_SUMS] or "correct" not in stored):
            stored = None  # scored by a version that kept other sums: scored again
            if ctx.rank.is_main:
                ctx.store.delete(key, lease=ctx.held_lease)
        if stored is None:
            piece = data if num_pieces == 1 else data.subset(np.arange(start, stop))
            sums = trainer.eval_sums(piece, should_stop=should_stop)
            if ctx.rank.is_main and (num_pieces > 1 or commit_single):
                staged = ctx.stage(key, meta={"step": step, "piece": i, "of": num_pieces})
                staged.write_bytes("sums.json", json.dumps(_encoded(sums)).encode())
                fault_point(fault, step=i)
                staged.commit()
            elif ctx.rank.is_main:
                fault_point(fault, step=i)  # the same moment, with nothing to commit
            if num_pieces > 1:
                ctx.say(f"scoring {what}: piece {i + 1}/{num_pieces} scored")
        else:
            sums = _decoded(stored)
        total = sums if total is None else {name: _joined(name, total[name], sums[name]) for name in total}
    assert total is not None
    return trainer.eval_result(total, pairs=n, data=data)


def _joined(name: str, before, piece):
    """Two pieces' sums as one: added, except each pair's correctness, which is laid end to end."""
    import torch

    return torch.cat([before, piece]) if name == "correct" else before + piece


def score_eval(ctx: RunView, trainer: Trainer, *, should_stop: Callable[[], bool] | None = None) -> dict:
    """Collective: the eval of the trainer's step on its eval data, in pieces (an eval set of
    one piece commits none); ``should_stop``: see ``Trainer.eval_sums``."""
    data = trainer.eval_data
    return score_in_pieces(
        ctx, trainer, data, what="eval", fault="eval_piece", commit_single=False, should_stop=should_stop
    )


def forget_eval(ctx: RunView, trainer: Trainer) -> None:
    """Rank 0: delete the eval's committed pieces (there are some only beyond one piece)."""
    if len(trainer.eval_data) > PIECE_PAIRS:
        forget(ctx, "eval")


def forget(ctx: RunView, what: str) -> None:
    """Rank 0: delete the committed pieces of ``what`` once the result they make is committed."""
    if ctx.rank.is_main:
        for key in ctx.store.committed_keys(scored_prefix(what)):
            ctx.store.delete(key, lease=ctx.held_lease)
