"""The one place a :class:`Trainer` is made: the train-epoch step, ``rmrun bench``'s worker and
the benchmarks all call :func:`build_trainer`.

What it takes is what a trainer is made of: the boosted model, the tokenized pairs, the plan
(batch sizes, steps, and the forward: ``plan.forward == SHARED`` runs the shared-prompt
forward) and the recipe's sections that the loop reads. A benchmark variant that differs from
a run (another forward, another batching) says so in the plan, the sections or ``cls``,
not in a second copy of this call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rmrun.recipe.schema import DataSection, EvalSection, LossSection, ScheduleSection

if TYPE_CHECKING:
    from rmrun.model.boost import Boosted
    from rmrun.recipe.plan import Plan
    from rmrun.train.sampler import Mixture
    from rmrun.train.trainer import Trainer, TrainState


def build_trainer(
    boosted: Boosted,
    *,
    pairs,
    eval_pairs=None,
    tokenizer,
    plan: Plan,
    rank,
    state: TrainState | None = None,
    schedule: ScheduleSection,
    loss: LossSection,
    data: DataSection,
    eval: EvalSection | None = None,
    seed: int = 0,
    cls: type[Trainer] | None = None,
) -> Trainer:
    """A trainer of ``boosted`` on ``pairs`` (``eval_pairs`` for evaluation, if any), from
    ``state`` (a fresh ``TrainState(seed=seed)`` when None). ``cls``: a subclass of
    ``Trainer`` to make instead (a benchmark's other batching)."""
    from rmrun.recipe.backbone import SHARED
    from rmrun.train.trainer import Trainer, TrainState

    eval = eval if eval is not None else EvalSection()
    return (cls or Trainer)(
        boosted=boosted,
        data=pairs,
        eval_data=eval_pairs,
        tokenizer=tokenizer,
        plan=plan,
        schedule=schedule,
        loss=loss,
        rank=rank,
        state=state if state is not None else TrainState(seed=seed),
        group_by_length=data.group_by_length,
        eval_batch_size=eval.batch_size or schedule.batch_size,
        share_prompt=plan.forward == SHARED,
        pack_pairs=data.pack_pairs,
        margin_scale=data.margin_scale if data.margins != "none" else None,
        mixture=mixture_of(data, num_pairs=len(pairs)),
    )


def mixture_of(data: DataSection, *, num_pairs: int) -> Mixture | None:
    """The epoch's draw from data.sources (``data.epoch_pairs``, default ``num_pairs``: all the
    sources hold); None without sources."""
    from rmrun.recipe.data_section import epoch_pairs_of
    from rmrun.train.sampler import Mixture

    if not data.sources:
        return None
    return Mixture(weights=tuple(s.weight for s in data.sources), epoch_pairs=epoch_pairs_of(data, num_pairs))


def source_pairs(pairs, *, data: DataSection) -> list[int] | None:
    """The training pairs of each of data.sources (None without them); DataError for a source
    none of whose pairs is left (all dropped as too long, say): an epoch could not draw from it."""
    import numpy as np

    from rmrun.data import DataError

    if not data.sources:
        return None
    ids = np.asarray(pairs.source_id)
    counts = np.bincount(ids[ids >= 0], minlength=len(data.sources)).tolist()
    for i, (source, n) in enumerate(zip(data.sources, counts)):
        if n == 0 and source.weight > 0:
            raise DataError(
                f"[data].sources[{i}] ({source.name}): no preference pairs left after tokenizing "
                f"{', '.join(source.files)} (bad rows skipped, or too long for data.max_length {data.max_length})"
            )
    return counts
