"""The epoch order and the batches each rank takes from it.

The order of an epoch is a pure function of (seed, epoch, pair lengths, batch size):
it does not depend on the number of processes. A run's position is the absolute
number of pairs of the epoch already consumed, so a resume, even with a different
number of processes, continues with exactly the pairs not yet seen.

A mixture of sources (``data.sources``) first draws the epoch's pairs: each source its
quota of ``data.epoch_pairs`` by weight, without repeats until all its pairs were drawn
(:class:`Mixture`); the drawn pairs are then ordered as a data set of their own.

With length grouping, pairs are shuffled, cut into mega-chunks, sorted by length
inside each chunk, cut into blocks of ``batch_size`` and the blocks shuffled: each
rank's micro-batch is one block of pairs of similar length, so padding stays small.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MEGA_CHUNK_BLOCKS = 64
# Tags the reward statistics' random stream apart from every epoch's, [seed, epoch] (an epoch
# is at most 10**6, so no [seed, epoch] spells [seed, this]).
REWARD_STATS_STREAM = 0x5EED_57A7
MIXTURE_STREAM = 0x313C_5EED  # and the mixture's draws, [seed, this, epoch, source]


def epoch_order(*, seed: int, epoch: int, lengths: np.ndarray, batch_size: int, group_by_length: bool) -> np.ndarray:
    """Indices of all pairs, in the order this epoch visits them.

    With ``group_by_length``: the shuffled pairs are cut into mega-chunks of
    ``MEGA_CHUNK_BLOCKS`` batches, each sorted by length (longest first, stable) and cut
    into blocks of ``batch_size``; the full blocks are shuffled, and the short block (only
    the last mega-chunk can have one) goes last so every micro-batch but the epoch's final
    one is full. Vectorized: a million pairs take tens of milliseconds at each start."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length or len(order) == 0:
        return order
    chunk = batch_size * MEGA_CHUNK_BLOCKS
    whole = len(order) // chunk * chunk
    grid = order[:whole].reshape(-1, chunk)
    grid = np.take_along_axis(grid, np.argsort(-lengths[grid], axis=1, kind="stable"), axis=1)
    tail = order[whole:]
    tail = tail[np.argsort(-lengths[tail], kind="stable")]
    pairs = np.concatenate([grid.ravel(), tail])
    num_full = len(pairs) // batch_size
    full = pairs[: num_full * batch_size].reshape(num_full, batch_size)
    return np.concatenate([full[rng.permutation(num_full)].ravel(), pairs[num_full * batch_size :]])


@dataclass(frozen=True)
class Mixture:
    """A weighted mixture of sources: each epoch draws ``epoch_pairs`` pairs, source ``s`` its
    quota (``epoch_pairs * weights[s] / sum(weights)``, rounded by largest remainder, ties to the
    earlier source), the pairs of each source taken from seeded permutations of them, one after
    another: a source smaller than its quota repeats each pair as evenly as it can, a larger one
    gives a sample without repeats, a new one every epoch."""

    weights: tuple[float, ...]
    epoch_pairs: int

    def quotas(self) -> list[int]:
        from rmrun.recipe.data_section import source_quotas

        return source_quotas(self.weights, self.epoch_pairs)

    def draw(self, *, seed: int, epoch: int, source_ids: np.ndarray) -> np.ndarray:
        """The indices of the pairs epoch ``epoch`` trains on, source by source (``source_ids``:
        each pair's source); a pure function of its arguments, as the epoch order is."""
        parts = [np.zeros(0, dtype=np.int64)]
        for source, quota in enumerate(self.quotas()):
            members = np.flatnonzero(source_ids == source)
            if quota == 0:
                continue
            if len(members) == 0:
                raise ValueError(f"source {source} has no pairs to draw {quota} from")
            rng = np.random.default_rng([seed, MIXTURE_STREAM, epoch, source])
            cycles = -(-int(quota) // len(members))
            parts += [members[rng.permutation(len(members))] for _ in range(cycles)]
            parts[-1] = parts[-1][: int(quota) - (cycles - 1) * len(members)]
        return np.concatenate(parts)


def mixture_order(
    *,
    seed: int,
    epoch: int,
    lengths: np.ndarray,
    batch_size: int,
    group_by_length: bool,
    mixture: Mixture | None,
    source_ids: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`epoch_order` of the pairs ``mixture`` draws this epoch (every pair once without one)."""
    if mixture is None:
        return epoch_order(
            seed=seed, epoch=epoch, lengths=lengths, batch_size=batch_size, group_by_length=group_by_length
        )
    assert source_ids is not None, "a mixture draws by the pairs' sources"
    drawn = mixture.draw(seed=seed, epoch=epoch, source_ids=source_ids)
    order = epoch_order(
        seed=seed, epoch=epoch, lengths=lengths[drawn], batch_size=batch_size, group_by_length=group_by_length
    )
    return drawn[order]


def reward_stats_sample(*, seed: int, num_pairs: int, num_samples: int) -> np.ndarray:
    """Indices, ascending, of ``num_samples`` pairs drawn uniformly without replacement from
    ``num_pairs``; every index when there are no more. A pure function of its arguments, like
    the epoch order: a resumed run, on any number of processes, scores the same pairs."""
    if num_samples >= num_pairs:
        return np.arange(num_pairs)
    rng = np.random.default_rng([seed, REWARD_STATS_STREAM])
    return np.sort(rng.choice(num_pairs, size=num_samples, replace=False))


@dataclass(frozen=True)
class MicroBatch:
    """One rank's pairs for one micro-batch; ``global_pairs`` counts all ranks' pairs."""

    indices: np.ndarray
    global_pairs: int


@dataclass(frozen=True)
class OptimizerStep:
    micro_batches: tuple[MicroBatch, ...]
    pairs: int  # pairs consumed by this optimizer step, over all ranks


def optimizer_steps(
    order: np.ndarray, *, start: int, batch_size: int, dp_size: int, dp_rank: int, accumulation_steps: int
) -> Iterator[OptimizerStep]:
    """Optimizer steps from pair ``start`` of the epoch order to its end.

    Each global micro-batch takes the next ``batch_size * dp_size`` pairs; rank r takes
    the r-th block of ``batch_size``. The epoch's final micro-batch may be short, and
    a rank may then get no pair (it still runs, with zero weight, so collectives match).
    """
    per_micro = batch_size * dp_size
    position = start
    while position < len(order):
        micro = []
        begin = position
        for _ in range(accumulation_steps):
            if position >= len(order):
                break
            window = order[position : position + per_micro]
            mine = _rank_share(window, batch_size=batch_size, dp_size=dp_size, dp_rank=dp_rank)
            micro.append(MicroBatch(indices=mine, global_pairs=len(window)))
            position += len(window)
        yield OptimizerStep(micro_batches=tuple(micro), pairs=position - begin)


def _rank_share(window: np.ndarray, *, batch_size: int, dp_size: int, dp_rank: int) -> np.ndarray:
    if len(window) == batch_size * dp_size:
        return window[dp_rank * batch_size : (dp_rank + 1) * batch_size]
    # A short final window: split as evenly as possible.
    return np.array_split(window, dp_size)[dp_rank]
