"""The training loop's hooks: periodic work after each optimizer step, with a cadence.

Logging (terminal, TensorBoard and the experiment trackers), evaluation, checkpoints and the stop signal that
turns a preemption into a committed checkpoint and exit 75. :class:`Hooks` holds the
three a run uses, in the order they run, and closes them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from rmrun.runtime.collective import any_flag
from rmrun.track import numeric
from rmrun.train.trainer import Hook, Preempted, Trainer

if TYPE_CHECKING:
    from rmrun.runtime.process import StopSignals
    from rmrun.track import Trackers
    from rmrun.train.checkpoint import PendingCheckpoint
    from rmrun.train.history import RunView


def eval_scalars(result: dict) -> dict[str, float]:
    """An eval's numbers as trackers take them: ``eval/<metric>``, ``eval/subset/<name>/<metric>``
    for each subset and ``eval/source/<name>/<metric>`` for each source of a mixture."""
    scalars = numeric(result, prefix="eval", skip=("step",))
    for table, prefix in (("subsets", "subset"), ("sources", "source")):
        for name, entry in result.get(table, {}).items():
            scalars.update(numeric(entry, prefix=f"eval/{prefix}/{name}"))
    return scalars


def source_words(result: dict) -> str:
    """ "; by source: alpha 0.712, beta 0.650" where the eval has pairs of a mixture's sources, else ""."""
    sources = result.get("sources") or {}
    return "; by source: " + ", ".join(f"{n} {e['accuracy']:.3f}" for n, e in sources.items()) if sources else ""


def best_of_n_words(result: dict) -> str:
    """ ", best of N 0.612 on 250 rows" where the eval has rows of several pairs, else ""."""
    if result.get("best_of_n_accuracy") is None:
        return ""
    return f", best of N {result['best_of_n_accuracy']:.3f} on {result['groups']} rows"


class LogHook:
    """metrics to the terminal: a progress bar on a TTY, plain lines every N steps otherwise."""

    SYNC_SECONDS = 60

    def __init__(
        self,
        *,
        every: int,
        plan,
        rank,
        mode: str,
        tensorboard_dir: str | None,
        start_step: int,
        tensorboard_url: str | None = None,
        sync_steps: int | None = None,
        trackers: Trackers | None = None,
    ):
        """``tensorboard_dir``: a local directory for the event files; ``tensorboard_url``: where
        they are copied (a state on s3://, gs://...) every minute, every ``sync_steps`` steps (the
        checkpoint interval: what a resume keeps is in the store), at epoch ends and at the end."""
        self.sync_steps = sync_steps
        self.trackers = trackers  # rank 0's experiment trackers: each step's metrics and each eval
        self.every = every
        self.plan = plan
        self.enabled = rank.is_main
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar = None
        self.lines = mode != "off" and not use_bar
        self.started = time.monotonic()
        self.start_step = start_step
        self.pairs = 0
        if self.enabled and use_bar and mode != "off":
            from tqdm import tqdm

            self.bar = tqdm(total=plan.total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.writer = None
        self.tensorboard_dir, self.tensorboard_url = tensorboard_dir, tensorboard_url
        self.synced: dict[str, int] = {}
        self.last_sync = time.monotonic()
        if self.enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run re-does the steps after its checkpoint; TensorBoard
            # then drops the first attempt's events from there on instead of showing both.
            # Also from step 1: a run killed before its first checkpoint committed starts over.
            self.writer = SummaryWriter(tensorboard_dir, purge_step=start_step + 1)

    def after_step(self, trainer: Trainer, *, boundary: bool) -> None:
        if not self.enabled:
            return
        line = trainer.state.metrics[-1]
        self.pairs += trainer.plan.pairs_per_step
        elapsed = time.monotonic() - self.started
        rate = self.pairs / elapsed if elapsed > 0 else 0.0
        done = trainer.state.step - self.start_step
        eta = (self.plan.total_steps - trainer.state.step) * elapsed / max(done, 1)
        if self.trackers is not None:
            self.trackers.log(line["step"], numeric(line, prefix="train", skip=("step",)))
        if self.writer is not None:
            for key in ("loss", "accuracy", "margin", "lr"):
                if line.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", line[key], line["step"])
            if (
                boundary
                or time.monotonic() - self.last_sync >= self.SYNC_SECONDS
                or (self.sync_steps and line["step"] % self.sync_steps == 0)
            ):
                self.sync()
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{line.get('loss', 0):.4f}",
                acc=f"{line.get('accuracy', 0):.3f}",
                lr=f"{line['lr']:.2e}",
                pairs_s=f"{rate:.1f}",
            )
            self.bar.update(1)
        elif self.lines and (line["step"] % self.every == 0 or boundary):
            print(
                f"step {line['step']}/{self.plan.total_steps} epoch {line['epoch']} loss {line.get('loss', 0):.4f} "
                f"acc {line.get('accuracy', 0):.3f} lr {line['lr']:.3e} {rate:.1f} pairs/s eta {eta:.0f}s",
                flush=True,
            )

    def log_eval(self, result: dict) -> None:
        if not self.enabled:
            return
        scalars = eval_scalars(result)
        if self.trackers is not None:
            self.trackers.log(result["step"], scalars)
        if self.writer is not None:
            for key in ("loss", "accuracy", "margin", "best_of_n_accuracy"):
                if f"eval/{key}" in scalars:
                    self.writer.add_scalar(f"eval/{key}", scalars[f"eval/{key}"], result["step"])
            for key, value in scalars.items():
                if key.startswith(("eval/subset/", "eval/source/")):
                    self.writer.add_scalar(key, value, result["step"])
        message = (
            f"eval step {result['step']}: loss {result['loss']:.4f} accuracy {result['accuracy']:.3f} "
            f"(longer-wins baseline {result['longer_wins_accuracy']:.3f}){best_of_n_words(result)}{source_words(result)}"
        )
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def sync(self) -> None:
        """Flush the event files and copy new or grown ones to ``tensorboard_url``."""
        self.last_sync = time.monotonic()
        if self.writer is None:
            return
        self.writer.flush()
        if self.tensorboard_url is None:
            return
        tensorboard_dir = self.tensorboard_dir
        assert tensorboard_dir is not None, "the writer writes into tensorboard_dir"
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.tensorboard_url)
        for name in sorted(os.listdir(tensorboard_dir)):
            path = os.path.join(tensorboard_dir, name)
            size = os.path.getsize(path)
            if os.path.isfile(path) and self.synced.get(name) != size:
                fs.put_file(path, f"{root.rstrip('/')}/{name}")
                self.synced[name] = size

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.sync()
            self.writer.close()
            self.writer = None


class EvalHook:
    """Evaluate every N steps and at each epoch end (when there is eval data).

    The eval is scored in pieces (``rmrun.run.scored``: an eval set of more than one piece
    commits each piece's sums) and looks for a stop signal before each batch, every rank
    agreeing: a stop leaves it at once, the checkpoint hook that runs next commits the step
    and stops the run, and the resumed run first finishes that eval (:meth:`catch_up`),
    scoring only the pieces not committed, so its result is the uninterrupted run's."""

    def __init__(self, *, ctx: RunView, every: int | None, log: LogHook, stop: StopSignals):
        self.ctx = ctx
        self.every = every
        self.log = log
        self.stop = stop

    def after_step(self, trainer: Trainer, *, boundary: bool) -> None:
        if self._due(trainer, boundary=boundary):
            result = self.evaluate(trainer)
            if result is not None:
                self.log.log_eval(result)

    def catch_up(self, trainer: Trainer) -> None:
        """At a resume: the eval due at the checkpoint's step, when a stop left it unfinished
        (its checkpoint is committed: stopped again, the run stops at once)."""
        state = trainer.state
        if state.step > 0 and self._due(trainer, boundary=state.pairs_consumed == 0 or state.finished):
            result = self.evaluate(trainer)
            if result is None:
                raise Preempted(self.stop.requested, step=state.step)
            self.log.log_eval(result)

    def _due(self, trainer: Trainer, *, boundary: bool) -> bool:
        if trainer.eval_data is None:
            return False
        due = boundary or (self.every is not None and trainer.state.step % self.every == 0)
        done = bool(trainer.state.evals) and trainer.state.evals[-1]["step"] == trainer.state.step
        return due and not done

    def evaluate(self, trainer: Trainer) -> dict | None:
        """Collective: the eval of this step, appended to the history; None when a stop left it."""
        from rmrun.run.scored import forget_eval, score_eval
        from rmrun.train.trainer import EvalStopped

        try:
            result = score_eval(self.ctx, trainer, should_stop=self._stopped)
        except EvalStopped as stopped:
            self.ctx.say(f"{stopped}: its scored pieces are kept")
            return None
        forget_eval(self.ctx, trainer)
        trainer.state.evals.append(result)
        return result

    def _stopped(self) -> bool:
        (stop,) = any_flag(self.stop.requested is not None)
        return stop


class CheckpointHook:
    """Commit every N steps / seconds, at epoch ends, at the end, and on a stop signal (then exit 75).

    With ``background`` the upload of a periodic checkpoint runs while training goes on
    (see rmrun/train/checkpoint.py); it is committed at the first step boundary after every
    rank's upload is over. At most one is in flight: the next checkpoint waits for it, and
    the checkpoints at epoch ends, at the end and on a stop signal block until committed.
    """

    def __init__(
        self,
        *,
        ctx: RunView,
        every: int | None,
        seconds: float | None,
        keep: int,
        stop: StopSignals,
        background: bool = False,
        stop_budget_seconds: float | None = None,
    ):
        self.ctx = ctx
        self.every = every
        self.seconds = seconds
        self.keep = keep
        self.stop = stop
        self.background = background
        self.stop_budget_seconds = stop_budget_seconds
        self.last = time.monotonic()
        self.pending: PendingCheckpoint | None = None
        self.warned = False

    def after_step(self, trainer: Trainer, *, boundary: bool) -> None:
        from rmrun.train.checkpoint import start_checkpoint

        step = trainer.state.step
        by_time = self.ctx.rank.is_main and self.seconds is not None and time.monotonic() - self.last >= self.seconds
        uploading = self.pending is not None and self.pending.uploading()
        # rank 0 decides time; any rank's signal counts; an upload is over when every rank's is
        by_time, stop, uploading = any_flag(by_time, self.stop.requested is not None, uploading)
        if self.pending is not None and not uploading:
            self.finish_pending()
        due = boundary or by_time or stop or (self.every is not None and step % self.every == 0)
        if due:
            self.finish_pending()  # on a stop signal too: the upload in flight finishes first
            self.pending = start_checkpoint(self.ctx, boosted=trainer.boosted, trainer_state=trainer.state.to_dict())
            self.last = time.monotonic()
            if boundary or stop or not self.background:
                self._finish(quiet=True)
        if stop:
            raise Preempted(self.stop.requested, step=step)

    def finish_pending(self) -> None:
        """All ranks: wait for the checkpoint in flight, if any, and commit it."""
        self._finish(quiet=False)

    def _finish(self, *, quiet: bool) -> None:
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        if pending.uploading() and not quiet:
            self.ctx.say(f"waiting for the background upload of checkpoint {pending.key}")
        self._check_budget(pending.key, pending.finish(keep=self.keep))

    def abandon(self) -> None:
        """The run is failing: leave the checkpoint in flight uncommitted (no collective)."""
        if self.pending is not None:
            self.pending.abandon()
            self.pending = None

    def _check_budget(self, key: str, timings: dict) -> None:
        total = sum(timings.values())
        if self.warned or self.stop_budget_seconds is None or total <= self.stop_budget_seconds:
            return
        self.warned = True
        self.ctx.say(
            f"warning: checkpoint {key} took {total:.1f} s to commit (snapshot {timings['snapshot_seconds']:.1f} s, "
            f"upload {timings['upload_seconds']:.1f} s, commit {timings['commit_seconds']:.1f} s), more than "
            f"checkpoint.stop_budget_seconds = {self.stop_budget_seconds:g}: the checkpoint taken on a stop signal "
            f"may not finish before the machine goes away"
        )


@dataclass
class Hooks:
    """The hooks of a run, in the order they run after each step (the checkpoint last, so
    it holds the evaluation of its step)."""

    log: LogHook
    eval: EvalHook
    checkpoint: CheckpointHook

    def __iter__(self) -> Iterator[Hook]:  # the fields above are the one list of hooks
        return iter(getattr(self, field.name) for field in fields(self))

    def close(self) -> None:
        """Leave a checkpoint still in flight uncommitted (no collective; a finished epoch
        has none), close the progress bar and the TensorBoard writer (synced to the store)."""
        try:
            self.checkpoint.abandon()
        finally:
            self.log.close()
