"""The training loop and its state.

``run_epoch`` reads top to bottom: take the next optimizer step of the epoch, run
it, advance the state, let the hooks (rmrun/train/hooks.py) do their periodic work.
Logging, evaluation, checkpoints and preemption are hooks with a cadence, not
branches in the loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from rmrun.data.share import collate_shared, shared_lengths, shared_prefix_lengths
from rmrun.model.model import RewardReader
from rmrun.runtime.collective import sum_tensor
from rmrun.runtime.faults import fault_point, trace_pairs
from rmrun.runtime.process import StopRequested
from rmrun.train.groups import group_metrics
from rmrun.train.loss import NUM_SUMS, SUM_FIELDS, metrics_from_sums, pair_losses, pair_sums
from rmrun.train.sampler import Mixture, OptimizerStep, mixture_order, optimizer_steps

LENGTH_BUCKETS = (64, 128, 256, 512, 1024)

# An optimizer step's sums: pair_sums' and the non-padding token count, in one tensor (one all-reduce).
STEP_SUM_FIELDS = (*SUM_FIELDS, "tokens")
LOSS_SUM = STEP_SUM_FIELDS.index("loss")
TOKENS_SUM = STEP_SUM_FIELDS.index("tokens")


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
    return [
        {"min_tokens": edges[i], "max_tokens": edges[i + 1], "pairs": int(c), "accuracy": float(k) / int(c)}
        for i, (c, k) in enumerate(counts.tolist())
        if c
    ]


def longer_wins_credit(lengths: np.ndarray) -> float:
    """Pairs the "longer response wins" baseline gets right (a tie counts half)."""
    diff = lengths[:, 0].astype(np.int64) - lengths[:, 1]
    return float((diff > 0).sum() + 0.5 * (diff == 0).sum())


class Preempted(StopRequested):
    """A stop signal was honoured after a committed checkpoint; the run can be requeued.
    ``signum``: the signal this process received (None when another rank's did)."""

    def __init__(self, signum: int | None, *, step: int):
        from rmrun.runtime.process import signal_name

        self.signum = signum
        self.step = step
        what = signal_name(signum) if signum is not None else "a stop signal"
        super().__init__(f"stopped by {what} after committing the checkpoint at step {step}")


class NonFiniteLoss(RuntimeError):
    pass


class EvalStopped(Exception):
    """An evaluation left at a batch boundary because a stop was requested (on every rank)."""


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
    def from_dict(cls, data: dict) -> TrainState:
        return cls(**data)


class Trainer:
    """One optimizer step at a time, and evaluation, on a boosted reward model."""

    def __init__(
        self,
        *,
        boosted,
        data,
        eval_data,
        tokenizer,
        plan,
        schedule,
        loss,
        rank,
        state: TrainState,
        group_by_length: bool,
        eval_batch_size: int,
        share_prompt: bool = False,
        pack_pairs: bool = False,
        margin_scale: float | None = None,
        mixture: Mixture | None = None,
    ):
        self.boosted = boosted
        self.mixture = mixture  # None: each epoch is every pair once
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
        self.margin_scale = margin_scale  # None: loss.margin alone; else each pair's margin from the data too
        self._prefixes: dict[int, tuple] = {}  # id(data) -> (data, shared prefix lengths, pair token counts)
        # What a batch is padded to: the longer side, or the shared-prompt sequence.
        self.lengths = shared_lengths(data, self._prefix(data)) if share_prompt else data.lengths().max(axis=1)

    # ------------------------------------------------------------- training
    def steps_of_epoch(self, epoch: int):
        order = mixture_order(
            seed=self.state.seed,
            epoch=epoch,
            lengths=self.lengths,
            batch_size=self.schedule.batch_size,
            group_by_length=self.group_by_length,
            mixture=self.mixture,
            source_ids=self.data.source_id,
        )
        return optimizer_steps(
            order,
            start=self.state.pairs_consumed,
            batch_size=self.schedule.batch_size,
            dp_size=self.plan.dp_size,
            dp_rank=self.dp_rank,
            accumulation_steps=self.schedule.accumulation_steps,
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
            batch = collate_shared(
                data, indices, prefix=self._prefix(data), pad_token_id=self.pad_id, pack=self.pack_pairs
            )
            with self.boosted.forward_context():
                chosen, rejected = self.read_rewards.shared_prompt(self.boosted.model, batch, device=self.device)
            return chosen.float(), rejected.float(), batch, int(self._prefixes[id(data)][2][indices].sum())
        batch = collate(data, indices, pad_token_id=self.pad_id)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with self.boosted.forward_context():
            rewards = self.read_rewards(self.boosted.model, ids, mask).float()
        half = len(indices)
        return rewards[:half], rewards[half:], batch, int(mask.sum())

    def _losses(self, chosen: torch.Tensor, rejected: torch.Tensor, indices: np.ndarray, data) -> torch.Tensor:
        """Per-pair losses: loss.margin plus, with data.margins, each pair's own margin scaled,
        and the centering term where loss.center_coef is on."""
        margin: float | torch.Tensor = self.loss.margin
        if self.margin_scale is not None:
            own = torch.from_numpy(np.asarray(data.margin[indices], dtype=np.float32)).to(chosen.device)
            margin = self.loss.margin + self.margin_scale * own
        return pair_losses(self.loss.name, chosen, rejected, margin=margin, center_coef=self.loss.center_coef)

    def optimizer_step(self, step: OptimizerStep) -> dict:
        """Micro-batches with one concatenated chosen+rejected forward each, then one update."""
        sums = torch.zeros(len(STEP_SUM_FIELDS))
        model_weight = self.plan.dp_size / step.pairs  # DDP averages over ranks: mean over all pairs
        for i, micro in enumerate(step.micro_batches):
            empty = len(micro.indices) == 0
            indices = np.array([0]) if empty else micro.indices
            with self.boosted.no_sync(i < len(step.micro_batches) - 1):
                chosen, rejected, batch, n_tokens = self._forward(indices, self.data)
                losses = self._losses(chosen, rejected, indices, self.data)
                self.boosted.backward(losses.sum() * (0.0 if empty else model_weight))
            if not empty:
                sums[:NUM_SUMS] += pair_sums(chosen, rejected, losses).cpu()
                sums[TOKENS_SUM] += n_tokens
                trace_pairs(
                    rank=self.rank.rank,
                    epoch=self.state.epoch,
                    step=self.state.step + 1,
                    pair_ids=batch["pair_ids"].tolist(),
                )
        sums = sum_tensor(sums, group=self.dp_group)
        lr = self.boosted.optimizer.param_groups[0]["lr"]
        finite = bool(torch.isfinite(sums[LOSS_SUM]))
        grad_norm = None
        if finite:
            grad_norm = self.boosted.clip(self.schedule.grad_clip)
            self.boosted.optimizer.step()
        elif self.schedule.nonfinite == "error":
            raise NonFiniteLoss(
                f"step {self.state.step + 1}: the loss is not finite; the last committed checkpoint is intact "
                f'(lower schedule.lr, or set schedule.nonfinite = "skip")'
            )
        self.boosted.optimizer.zero_grad()
        self.boosted.scheduler.step()
        self.data.release_pages()  # the pages this step read stop counting as this rank's memory
        line = {
            "step": self.state.step + 1,
            "epoch": self.state.epoch,
            "lr": lr,
            **metrics_from_sums(sums[:NUM_SUMS], center=self.loss.center_coef > 0),
            "grad_norm": grad_norm,
            "tokens": int(sums[TOKENS_SUM]),
            "skipped": not finite,
        }
        return line

    def advance(self, step: OptimizerStep, line: dict) -> bool:
        """Move the position past ``step``; True at the end of an epoch."""
        s = self.state
        s.step += 1
        s.pairs_consumed += step.pairs
        line["pairs_consumed"] = s.pairs_consumed
        s.metrics.append(line)
        epoch_end = s.pairs_consumed >= (self.mixture.epoch_pairs if self.mixture else len(self.data))
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
        data = self.eval_data if data is None else data
        return self.eval_result(self.eval_sums(data), pairs=len(data), data=data)

    def eval_sums(self, data, *, should_stop: Callable[[], bool] | None = None) -> dict[str, torch.Tensor]:
        """The sums the eval metrics are made of, over all ranks (each scores its share of
        ``data``); sums of several data sets added in a fixed order give their metrics together.

        ``should_stop``, a collective every rank calls before each batch (every rank has the
        same number of batches), raises :class:`EvalStopped` on every rank once it is True."""
        model = self.boosted.model
        was_training = model.training
        model.eval()
        try:
            return self._eval_sums(data, should_stop)
        finally:
            model.train(was_training)

    def _eval_sums(self, data, should_stop: Callable[[], bool] | None) -> dict[str, torch.Tensor]:
        n = len(data)
        per_rank = -(-n // self.plan.dp_size)
        mine = np.arange(self.dp_rank * per_rank, min(n, (self.dp_rank + 1) * per_rank))
        num_batches = -(-per_rank // self.eval_batch_size)
        sums = torch.zeros(NUM_SUMS)
        buckets = torch.zeros(len(LENGTH_BUCKETS) + 1, 2)  # (pairs, correct)
        longer_wins = torch.zeros(1)
        correct_pairs = torch.zeros(n)  # 1 where the chosen reward is above the rejected one
        lengths = data.lengths()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for b in range(num_batches):
                fault_point("eval", step=self.state.step, rank=self.rank.rank)
                if should_stop is not None and should_stop():
                    raise EvalStopped(f"the eval at step {self.state.step} stopped at batch {b + 1}/{num_batches}")
                indices = mine[b * self.eval_batch_size : (b + 1) * self.eval_batch_size]
                empty = len(indices) == 0
                chosen, rejected, _, _ = self._forward(np.array([0]) if empty else indices, data)
                if empty:
                    continue
                losses = self._losses(chosen, rejected, indices, data)
                sums += pair_sums(chosen, rejected, losses).cpu()
                correct = (chosen > rejected).cpu().numpy()
                correct_pairs[torch.from_numpy(indices)] = torch.from_numpy(correct).float()
                buckets += torch.from_numpy(length_bucket_counts(lengths[indices], correct)).float()
                longer_wins += longer_wins_credit(lengths[indices])
                data.release_pages()
        return {
            "sums": sum_tensor(sums, group=self.dp_group),
            "buckets": sum_tensor(buckets, group=self.dp_group),
            "longer_wins": sum_tensor(longer_wins, group=self.dp_group),
            "correct": sum_tensor(correct_pairs, group=self.dp_group),
        }

    def eval_result(self, sums: dict[str, torch.Tensor], *, pairs: int, data=None) -> dict:
        """The eval metrics of ``pairs`` pairs from their :meth:`eval_sums` (``data``: the pairs,
        for the accuracy per subset and per group of a row's pairs: :func:`group_metrics`)."""
        result: dict[str, Any] = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "pairs": pairs,
            **metrics_from_sums(sums["sums"], center=self.loss.center_coef > 0),
        }
        result["longer_wins_accuracy"] = float(sums["longer_wins"]) / pairs if pairs else None
        result["accuracy_by_length"] = accuracy_by_length(sums["buckets"])
        if data is not None and "correct" in sums:
            result.update(group_metrics(sums["correct"].numpy() > 0.5, data))
        return result


def _group_rank(group) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group) if group is not None else dist.get_rank()


class Hook(Protocol):
    def after_step(self, trainer: Trainer, *, boundary: bool) -> None: ...


def run_epoch(trainer: Trainer, epoch: int, hooks: Iterable[Hook]) -> None:
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
