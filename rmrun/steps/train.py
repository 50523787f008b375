"""One train-epoch step of the graph."""

from __future__ import annotations

from rmrun.store.keys import epoch_key


def _trainer(ctx, *, schedule, loss, data, eval):
    from rmrun.backbone import SHARED
    from rmrun.train import Trainer

    if "trainer" not in ctx.artifacts:
        tokenized = ctx.artifacts["data"]
        ctx.artifacts["trainer"] = Trainer(
            boosted=ctx.artifacts["boosted"], data=tokenized["train"], eval_data=tokenized.get("eval"),
            tokenizer=ctx.artifacts["tokenizer"], plan=ctx.plan, schedule=schedule, loss=loss, rank=ctx.rank,
            state=ctx.artifacts["train_state"], group_by_length=data.group_by_length,
            eval_batch_size=eval.batch_size or schedule.batch_size,
            share_prompt=ctx.plan.forward == SHARED, pack_pairs=data.pack_pairs,
        )
    return ctx.artifacts["trainer"]


def _hooks(ctx, trainer, *, checkpoint, eval, log):
    import posixpath

    from rmrun.train import CheckpointHook, EvalHook, LogHook, StopSignal

    if "hooks" not in ctx.artifacts:
        tb, tb_url = None, None
        if log.tensorboard and ctx.rank.is_main:
            if "://" not in ctx.store.root:
                tb = posixpath.join(ctx.store.root, "tensorboard")
            else:  # written locally, copied into the store (TensorBoard reads s3:// and gs:// logdirs)
                import tempfile

                tb, tb_url = tempfile.mkdtemp(prefix="rmrun-tensorboard-"), posixpath.join(ctx.store.root, "tensorboard")
        log_hook = LogHook(every=log.interval_steps, plan=ctx.plan, rank=ctx.rank, mode=log.progress,
                           tensorboard_dir=tb, tensorboard_url=tb_url, start_step=trainer.state.step,
                           sync_steps=checkpoint.interval_steps)
        ctx.artifacts["hooks"] = [
            log_hook,
            EvalHook(every=eval.interval_steps, log=log_hook),
            CheckpointHook(ctx=ctx, every=checkpoint.interval_steps, seconds=checkpoint.interval_seconds,
                           keep=checkpoint.keep, stop=StopSignal(), background=checkpoint.async_upload,
                           stop_budget_seconds=checkpoint.stop_budget_seconds),
        ]
    return ctx.artifacts["hooks"]


def run_epoch(ctx, step, *, schedule, loss, checkpoint, eval, log, data, run) -> None:
    from rmrun.collective import barrier
    from rmrun.faults import fault_point
    from rmrun.train import NonFiniteLoss
    from rmrun.train import run_epoch as loop

    epoch = step.params["epoch"]
    trainer = _trainer(ctx, schedule=schedule, loss=loss, data=data, eval=eval)
    if trainer.state.epoch <= epoch and not trainer.state.finished:
        hooks = _hooks(ctx, trainer, checkpoint=checkpoint, eval=eval, log=log)
        try:
            try:
                loop(trainer, epoch, hooks)
            except NonFiniteLoss:
                # Raised by every rank at the same step (the loss is all-reduced): the checkpoint in
                # flight holds a sound earlier state, so it is committed before the run stops.
                hooks[-1].finish_pending()
                raise
            hooks[-1].finish_pending()  # the epoch's end waits for the checkpoint in flight (none: it blocked)
        except BaseException:
            hooks[-1].abandon()  # the CheckpointHook: an upload in flight is never committed now
            try:  # keep what was logged (a preemption, say); the original error is what is reported
                hooks[0].sync()
            except Exception:
                pass
            raise
        if trainer.state.finished:
            hooks[0].close()  # the LogHook: progress bar and TensorBoard files
    if ctx.rank.is_main and ctx.store.open_verified(epoch_key(epoch)) is None:
        staged = ctx.stage(epoch_key(epoch), meta={"epoch": epoch, "step": trainer.state.step})
        staged.write_bytes("epoch.json", b"{}")
        fault_point("epoch_commit", step=trainer.state.step)
        staged.commit()
    barrier()
    fault_point("epoch_done", step=trainer.state.step, rank=ctx.rank.rank)
