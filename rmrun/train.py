"""The training loop, its state and its hooks.

``run_epoch`` reads top to bottom: take the next optimizer step of the epoch, run
it, advance the state, let the hooks do their periodic work. Logging, evaluation,
checkpoints and preemption are hooks with a cadence, not branches in the loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from rmrun.collective import any_flag, sum_tensor
from rmrun.data.share import collate_shared, shared_lengths, shared_prefix_lengths
from rmrun.faults import fault_point, trace_pairs
from rmrun.loss import metrics_from_sums, pair_losses, pair_sums
from rmrun.model import RewardReader
from rmrun.sampler import OptimizerStep, epoch_order, optimizer_steps

LENGTH_BUCKETS = (64, 128, 256, 512, 1024)


def length_bucket_counts(lengths: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """``(len(LENGTH_BUCKETS) + 1, 2)`` counts of (pairs, correct) by the longer side's token count;
    they add up across batches and ranks."""
    bucket = np.searchsorted(np.asarray(LENGTH_BUCKETS), lengths.max(axis=1), side="right")
    counts = np.zeros((len(LENGTH_BUCKETS) + 1, 2))
    np.add.at(counts[:, 0], bucket, 1.0)
    np.add.at(counts[:, 1], bucket, np.asarray(correct, dtype=np.float64))
    return counts


def accuracy_by_length(counts) -> list[dict]:
    """The report rows of :func:`length_bucket_counts` (summed), empty buckets left out."""
    edges = (0,) + LENGTH_BUCKETS + (None,)
    return [{"min_tokens": edges[i], "max_tokens": edges[i + 1], "pairs": int(c), "accuracy": float(k) / int(c)}
            for i, (c, k) in enumerate(counts.tolist()) if c]


def longer_wins_credit(lengths: np.ndarray) -> float:
    """Pairs the "longer response wins" baseline gets right (a tie counts half)."""
    diff = lengths[:, 0].astype(np.int64) - lengths[:, 1]
    return float((diff > 0).sum() + 0.5 * (diff == 0).sum())


class Preempted(Exception):
    """A stop signal was honoured after a committed checkpoint; the run can be requeued."""


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must carry, as JSON."""

    seed: int
    step: int = 0
    epoch: int = 0
    pairs_consumed: int = 0  # of the current epoch, over all ranks
    finished: bool = False
    metrics: list = field(default_factory=list)  # one line per optimizer step
    evals: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**data)


class Trainer:
    """One optimizer step at a time, and evaluation, on a boosted reward model."""

    def __init__(self, *, boosted, data, eval_data, tokenizer, plan, schedule, loss, rank, state: TrainState,
                 group_by_length: bool, eval_batch_size: int, share_prompt: bool = False, pack_pairs: bool = False):
        self.boosted = boosted
        self.data = data
        self.eval_data = eval_data
        self.pad_id = tokenizer.pad_token_id
        self.plan = plan
        self.schedule = schedule
        self.loss = loss
        self.rank = rank
        self.state = state
        self.group_by_length = group_by_length
        self.eval_batch_size = eval_batch_size
        self.read_rewards = RewardReader(boosted.model)
        self.device = torch.device("cuda", torch.cuda.current_device()) if rank.cuda else torch.device("cpu")
        dp_group = boosted.dp_group
        self.dp_group = dp_group
        self.dp_rank = _group_rank(dp_group)
        self.share_prompt = share_prompt
        self.pack_pairs = pack_pairs
        self._prefixes: dict[int, tuple] = {}  # id(data) -> (data, shared prefix lengths, pair token counts)
        # What a batch is padded to: the longer side, or the shared-prompt sequence.
        self.lengths = shared_lengths(data, self._prefix(data)) if share_prompt else data.lengths().max(axis=1)

    # ------------------------------------------------------------- training
    def steps_of_epoch(self, epoch: int):
        order = epoch_order(
            seed=self.state.seed, epoch=epoch, lengths=self.lengths,
            batch_size=self.schedule.batch_size, group_by_length=self.group_by_length,
        )
        return optimizer_steps(
            order, start=self.state.pairs_consumed, batch_size=self.schedule.batch_size,
            dp_size=self.plan.dp_size, dp_rank=self.dp_rank, accumulation_steps=self.schedule.accumulation_steps,
        )

    def _prefix(self, data) -> np.ndarray:
        """The shared prompt length of each pair of ``data``, computed once per data set."""
        if id(data) not in self._prefixes:
            self._prefixes[id(data)] = (data, shared_prefix_lengths(data), data.lengths().sum(axis=1))
        return self._prefixes[id(data)][1]

    def _forward(self, indices: np.ndarray, data):
        """(chosen rewards, rejected rewards, batch, the pairs' token count) of pairs ``indices``.

        The token count is the pairs' own (both sides, prompt included in each) whichever
        forward runs, so the logged ``tokens`` mean the same under both."""
        from rmrun.data import collate

        if self.share_prompt:
            batch = collate_shared(data, indices, prefix=self._prefix(data), pad_token_id=self.pad_id,
                                   pack=self.pack_pairs)
            with self.boosted.forward_context():
                chosen, rejected = self.read_rewards.shared_prompt(self.boosted.model, batch, device=self.device)
            return chosen.float(), rejected.float(), batch, int(self._prefixes[id(data)][2][indices].sum())
        batch = collate(data, indices, pad_token_id=self.pad_id)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with self.boosted.forward_context():
            rewards = self.read_rewards(self.boosted.model, ids, mask).float()
        half = len(indices)
        return rewards[:half], rewards[half:], batch, int(mask.sum())

    def optimizer_step(self, step: OptimizerStep) -> dict:
        """Micro-batches with one concatenated chosen+rejected forward each, then one update."""
        sums = torch.zeros(9)  # pair_sums(...) and the non-padding token count: one all-reduce
        model_weight = self.plan.dp_size / step.pairs  # DDP averages over ranks: mean over all pairs
        for i, micro in enumerate(step.micro_batches):
            empty = len(micro.indices) == 0
            indices = np.array([0]) if empty else micro.indices
            with self.boosted.no_sync(i < len(step.micro_batches) - 1):
                chosen, rejected, batch, n_tokens = self._forward(indices, self.data)
                losses = pair_losses(self.loss.name, chosen, rejected, margin=self.loss.margin)
                self.boosted.backward(losses.sum() * (0.0 if empty else model_weight))
            if not empty:
                sums[:8] += pair_sums(chosen, rejected, losses).cpu()
                sums[8] += n_tokens
                trace_pairs(rank=self.rank.rank, epoch=self.state.epoch, step=self.state.step + 1,
                            pair_ids=batch["pair_ids"].tolist())
        sums = sum_tensor(sums, group=self.dp_group)
        lr = self.boosted.optimizer.param_groups[0]["lr"]
        finite = bool(torch.isfinite(sums[1]))
        grad_norm = None
        if finite:
            grad_norm = self.boosted.clip(self.schedule.grad_clip)
            self.boosted.optimizer.step()
        elif self.schedule.nonfinite == "error":
            raise NonFiniteLoss(
                f"step {self.state.step + 1}: the loss is not finite; the last committed checkpoint is intact "
                f"(lower schedule.lr, or set schedule.nonfinite = \"skip\")"
            )
        self.boosted.optimizer.zero_grad()
        self.boosted.scheduler.step()
        line = {"step": self.state.step + 1, "epoch": self.state.epoch, "lr": lr, **metrics_from_sums(sums[:8]),
                "grad_norm": grad_norm, "tokens": int(sums[8]), "skipped": not finite}
        return line

    def advance(self, step: OptimizerStep, line: dict) -> bool:
        """Move the position past ``step``; True at the end of an epoch."""
        s = self.state
        s.step += 1
        s.pairs_consumed += step.pairs
        line["pairs_consumed"] = s.pairs_consumed
        s.metrics.append(line)
        epoch_end = s.pairs_consumed >= len(self.data)
        if epoch_end:
            s.epoch += 1
            s.pairs_consumed = 0
        # Finished by epochs and the max_steps cap, not by the plan's step count: after a
        # change of world size the steps already taken had another size.
        capped = self.schedule.max_steps is not None and s.step >= self.schedule.max_steps
        if s.epoch >= self.plan.num_epochs or capped:
            s.finished = True
        return epoch_end or s.finished

    # ------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, data=None) -> dict:
        """Eval metrics over all ranks (on ``data``, default the eval files); never touches the
        training RNG streams or data order."""
        model = self.boosted.model
        was_training = model.training
        model.eval()
        data = self.eval_data if data is None else data
        n = len(data)
        per_rank = -(-n // self.plan.dp_size)
        mine = np.arange(self.dp_rank * per_rank, min(n, (self.dp_rank + 1) * per_rank))
        num_batches = -(-per_rank // self.eval_batch_size)
        sums = torch.zeros(8)
        buckets = torch.zeros(len(LENGTH_BUCKETS) + 1, 2)  # (pairs, correct)
        longer_wins = torch.zeros(1)
        lengths = data.lengths()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for b in range(num_batches):
                fault_point("eval", step=self.state.step, rank=self.rank.rank)
                indices = mine[b * self.eval_batch_size : (b + 1) * self.eval_batch_size]
                empty = len(indices) == 0
                chosen, rejected, _, _ = self._forward(np.array([0]) if empty else indices, data)
                if empty:
                    continue
                losses = pair_losses(self.loss.name, chosen, rejected, margin=self.loss.margin)
                sums += pair_sums(chosen, rejected, losses).cpu()
                correct = (chosen > rejected).cpu().numpy()
                buckets += torch.from_numpy(length_bucket_counts(lengths[indices], correct)).float()
                longer_wins += longer_wins_credit(lengths[indices])
        model.train(was_training)
        sums = sum_tensor(sums, group=self.dp_group)
        buckets = sum_tensor(buckets, group=self.dp_group)
        longer_wins = sum_tensor(longer_wins, group=self.dp_group)
        result = {"step": self.state.step, "epoch": self.state.epoch, "pairs": n, **metrics_from_sums(sums)}
        result["longer_wins_accuracy"] = float(longer_wins) / n if n else None
        result["accuracy_by_length"] = accuracy_by_length(buckets)
        return result


def _group_rank(group) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group) if group is not None else dist.get_rank()


# ----------------------------------------------------------------- hooks


class StopSignal:
    """SIGTERM / SIGUSR1 only set a flag; the loop acts on it at the next step boundary."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


class LogHook:
    """metrics to the terminal: a progress bar on a TTY, plain lines every N steps otherwise."""

    SYNC_SECONDS = 60

    def __init__(self, *, every: int, plan, rank, mode: str, tensorboard_dir: str | None, start_step: int,
                 tensorboard_url: str | None = None, sync_steps: int | None = None):
        """``tensorboard_dir``: a local directory for the event files; ``tensorboard_url``: where
        they are copied (a state on s3://, gs://...) every minute, every ``sync_steps`` steps (the
        checkpoint interval: what a resume keeps is in the store), at epoch ends and at the end."""
        self.sync_steps = sync_steps
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
        if self.writer is not None:
            for key in ("loss", "accuracy", "margin", "lr"):
                if line.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", line[key], line["step"])
            if (boundary or time.monotonic() - self.last_sync >= self.SYNC_SECONDS
                    or (self.sync_steps and line["step"] % self.sync_steps == 0)):
                self.sync()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{line.get('loss', 0):.4f}", acc=f"{line.get('accuracy', 0):.3f}",
                                 lr=f"{line['lr']:.2e}", pairs_s=f"{rate:.1f}")
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
        if self.writer is not None:
            for key in ("loss", "accuracy", "margin"):
                self.writer.add_scalar(f"eval/{key}", result[key], result["step"])
        message = (f"eval step {result['step']}: loss {result['loss']:.4f} accuracy {result['accuracy']:.3f} "
                   f"(longer-wins baseline {result['longer_wins_accuracy']:.3f})")
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
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.tensorboard_url)
        for name in sorted(os.listdir(self.tensorboard_dir)):
            path = os.path.join(self.tensorboard_dir, name)
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
    """Evaluate every N steps and at each epoch end (when there is eval data)."""

    def __init__(self, *, every: int | None, log: LogHook):
        self.every = every
        self.log = log

    def after_step(self, trainer: Trainer, *, boundary: bool) -> None:
        if trainer.eval_data is None:
            return
        due = boundary or (self.every is not None and trainer.state.step % self.every == 0)
        done = trainer.state.evals and trainer.state.evals[-1]["step"] == trainer.state.step
        if due and not done:
            result = trainer.evaluate()
            trainer.state.evals.append(result)
            self.log.log_eval(result)


class CheckpointHook:
    """Commit every N steps / seconds, at epoch ends, at the end, and on a stop signal (then exit 75).

    With ``background`` the upload of a periodic checkpoint runs while training goes on
    (see rmrun/checkpoint.py); it is committed at the first step boundary after every
    rank's upload is over. At most one is in flight: the next checkpoint waits for it, and
    the checkpoints at epoch ends, at the end and on a stop signal block until committed.
    """

    def __init__(self, *, ctx, every: int | None, seconds: float | None, keep: int, stop: StopSignal,
                 background: bool = False, stop_budget_seconds: float | None = None):
        self.ctx = ctx
        self.every = every
        self.seconds = seconds
        self.keep = keep
        self.stop = stop
        self.background = background
        self.stop_budget_seconds = stop_budget_seconds
        self.last = time.monotonic()
        self.pending = None
        self.warned = False

    def after_step(self, trainer: Trainer, *, boundary: bool) -> None:
        from rmrun.checkpoint import start_checkpoint

        step = trainer.state.step
        by_time = self.ctx.rank.is_main and self.seconds is not None and time.monotonic() - self.last >= self.seconds
        uploading = self.pending is not None and self.pending.uploading()
        # rank 0 decides time; any rank's signal counts; an upload is over when every rank's is
        by_time, stop, uploading = any_flag(by_time, self.stop.requested, uploading)
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
            raise Preempted(f"stopped by signal after committing the checkpoint at step {step}")

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


def run_epoch(trainer: Trainer, epoch: int, hooks: list) -> None:
    """Train until the end of ``epoch`` (or the run's last step), with hooks after each step."""
    for step in trainer.steps_of_epoch(epoch):
        line = trainer.optimizer_step(step)
        boundary = trainer.advance(step, line)
        fault_point("step", step=trainer.state.step, rank=trainer.rank.rank)
        for hook in hooks:
            hook.after_step(trainer, boundary=boundary)
        if trainer.state.finished:
            return


def metrics_jsonl(state: TrainState) -> str:
    return "".join(json.dumps(line, sort_keys=True) + "\n" for line in state.metrics)
