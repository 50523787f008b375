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
    )
