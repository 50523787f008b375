"""One train-epoch step of the graph.

The first epoch step makes the trainer (every later one needs it, so it runs even when
its epoch is done); the first that trains makes the hooks, which the run session
closes. An epoch already trained (the state resumed past it) only commits its marker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rmrun.recipe.schema import (
    CheckpointSection,
    DataSection,
    EvalSection,
    LogSection,
    LossSection,
    RunSection,
    ScheduleSection,
)
from rmrun.store.keys import epoch_key

if TYPE_CHECKING:
    from rmrun.run.context import RunContext
    from rmrun.run.graph import Step
    from rmrun.train.hooks import Hooks
    from rmrun.train.trainer import Trainer


def _make_trainer(
    ctx: RunContext, *, schedule: ScheduleSection, loss: LossSection, data: DataSection, eval: EvalSection
) -> Trainer:
    from rmrun.train.build import build_trainer

    tokenized, plan, state = ctx.data, ctx.plan, ctx.train_state
    assert tokenized is not None and plan is not None and state is not None and ctx.boosted is not None
    return build_trainer(
        ctx.boosted,
        pairs=tokenized["train"],
        eval_pairs=tokenized.get("eval"),
        tokenizer=ctx.tokenizer,
        plan=plan,
        rank=ctx.rank,
        state=state,
        schedule=schedule,
        loss=loss,
        data=data,
        eval=eval,
    )


def _make_hooks(
    ctx: RunContext, trainer: Trainer, *, checkpoint: CheckpointSection, eval: EvalSection, log: LogSection
) -> Hooks:
    import posixpath

    from rmrun.runtime.process import STOP
    from rmrun.train.hooks import CheckpointHook, EvalHook, Hooks, LogHook

    tb, tb_url = None, None
    if log.tensorboard and ctx.rank.is_main:
        if "://" not in ctx.store.root:
            tb = posixpath.join(ctx.store.root, "tensorboard")
        else:  # written locally, copied into the store (TensorBoard reads s3:// and gs:// logdirs)
            import tempfile

            tb, tb_url = tempfile.mkdtemp(prefix="rmrun-tensorboard-"), posixpath.join(ctx.store.root, "tensorboard")
    log_hook = LogHook(
        every=log.interval_steps,
        plan=trainer.plan,
        rank=ctx.rank,
        mode=log.progress,
        tensorboard_dir=tb,
        tensorboard_url=tb_url,
        start_step=trainer.state.step,
        sync_steps=checkpoint.interval_steps,
        trackers=ctx.trackers,
    )
    if ctx.trackers is not None:
        ctx.trackers.log_history(trainer.state.metrics, trainer.state.evals)
    return Hooks(
        log=log_hook,
        eval=EvalHook(ctx=ctx, every=eval.interval_steps, log=log_hook, stop=STOP),
        checkpoint=CheckpointHook(
            ctx=ctx,
            every=checkpoint.interval_steps,
            seconds=checkpoint.interval_seconds,
            keep=checkpoint.keep,
            stop=STOP,
            background=checkpoint.async_upload,
            stop_budget_seconds=checkpoint.stop_budget_seconds,
        ),
    )


def _train(trainer: Trainer, epoch: int, hooks: Hooks) -> None:
    from rmrun.runtime.process import STOP
    from rmrun.train.trainer import NonFiniteLoss, run_epoch

    try:
        try:
            STOP.defer()  # a stop signal now waits for the next step boundary's checkpoint
            hooks.eval.catch_up(trainer)  # the eval a stop left unfinished at the checkpoint's step
            run_epoch(trainer, epoch, hooks)
        except NonFiniteLoss:
            # Raised by every rank at the same step (the loss is all-reduced): the checkpoint in
            # flight holds a sound earlier state, so it is committed before the run stops.
            hooks.checkpoint.finish_pending()
            raise
        hooks.checkpoint.finish_pending()  # the epoch's end waits for the checkpoint in flight (none: it blocked)
    except BaseException:
        STOP.deferred = False
        hooks.checkpoint.abandon()  # an upload in flight is never committed now
        try:  # keep what was logged (a preemption, say); the original error is what is reported
            hooks.log.sync()
        except Exception:
            pass
        raise
    # Every step of the epoch is committed: a signal received since stops here, at once.
    STOP.undefer(where=f"after the training steps of epoch {epoch} were committed")
    if trainer.state.finished:
        hooks.log.close()  # the progress bar and TensorBoard files, before the final eval and export say anything


def train_epoch(
    ctx: RunContext,
    step: Step,
    *,
    schedule: ScheduleSection,
    loss: LossSection,
    checkpoint: CheckpointSection,
    eval: EvalSection,
    log: LogSection,
    data: DataSection,
    run: RunSection,
) -> None:
    from rmrun.runtime.collective import barrier
    from rmrun.runtime.faults import fault_point

    epoch = step.params["epoch"]
    if ctx.trainer is None:
        ctx.trainer = _make_trainer(ctx, schedule=schedule, loss=loss, data=data, eval=eval)
    trainer = ctx.trainer
    if trainer.state.epoch <= epoch and not trainer.state.finished:
        if ctx.hooks is None:
            ctx.hooks = _make_hooks(ctx, trainer, checkpoint=checkpoint, eval=eval, log=log)
        _train(trainer, epoch, ctx.hooks)
    if ctx.rank.is_main and ctx.store.open_verified(epoch_key(epoch)) is None:
        staged = ctx.stage(epoch_key(epoch), meta={"epoch": epoch, "step": trainer.state.step})
        staged.write_bytes("epoch.json", b"{}")
        fault_point("epoch_commit", step=trainer.state.step)
        staged.commit()
    barrier()
    fault_point("epoch_done", step=trainer.state.step, rank=ctx.rank.rank)
