"""Training-side benchmark machinery: a pool of worker processes (one per rank) and the
jobs they run.

A :class:`WorkerPool` spawns ``nproc`` fresh Python processes that join one gloo process
group through ``rmrun.runtime.dist.start`` (RANK/WORLD_SIZE/MASTER_PORT set as torchrun would,
on a port the OS picked). The pytest process never imports ColossalAI and never joins the
group; it sends a job to every rank and collects the per-rank results. Each pool pays the
ColossalAI import once and runs every model size.

The ``train`` job builds, on the same model init and the same tokenized data:

- ``rmrun``: rmrun's :class:`~rmrun.train.trainer.Trainer` on a ddp-boosted model, batches from
  rmrun's sampler (length-grouped), padded to the longest sequence of the batch;
- ``hand``: a hand-written PyTorch loop (AdamW, fused on a CPU as rmrun's, same collate, one concatenated
  chosen+rejected forward, loss, backward, clip, step) on exactly the batches ``rmrun`` takes;
- ``colossalchat``: rmrun's Trainer with ColossalChat's batching: random batches (no
  length grouping) and every sequence padded to ``max_length``, as ColossalChat's
  preference collator does;
- ``shared``: rmrun's Trainer with the shared-prompt forward (one sequence per pair, the
  prompt run once; ``rmrun.data.share``) and its own length-grouped batches (grouped by the
  shared sequence's length), as a run with ``data.share_prompt`` takes them: the same seed
  shuffles the same pairs into the same mega-chunks, so its step k draws on the pairs of
  rmrun's step k, ordered by another length;
- ``packed``: the same with ``data.pack_pairs`` (several pairs per row), on ``shared``'s batches;

and steps them round-robin (one optimizer step of each variant per round, the order
rotating every round) so that noise from other work on the machine hits them alike. It
then times rmrun checkpoint saves and loads (``rmrun.train.checkpoint``) through a local state
store, on the rmrun variant's trained model and optimizer.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import tempfile
import time
import traceback
from functools import cache, lru_cache

from rmrun.bench.worker import checkpoint_timings
from rmrun.recipe.plugins import PLUGINS

MODEL_SIZES = ("tiny", "small")
# The small Llama: hidden 256, 4 layers, 4 heads, intermediate 688 (built from the tiny config).
SMALL_OVERRIDES = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "intermediate_size": 688,
}
# On a GPU the plugins are timed on a model big enough to matter (hidden 1024, 12 layers, 16 heads,
# intermediate 2816: ~156M parameters with the tiny tokenizer's vocabulary), in bf16.
GPU_MODEL_SIZES = ("medium",)
MEDIUM_OVERRIDES = {
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 64,
    "intermediate_size": 2816,
}
VARIANTS = ("rmrun", "hand", "colossalchat", "dense", "shared", "packed")


# --------------------------------------------------------------------------- pool


class WorkerError(RuntimeError):
    pass


class WorkerPool:
    """``nproc`` spawned ranks in one process group; ``run(job, **kwargs)`` -> per-rank results."""

    def __init__(self, nproc: int, *, threads_per_rank: int | None = None, start_timeout: float = 300):
        import multiprocessing as mp

        self.nproc = nproc
        cores = os.cpu_count() or 1
        threads = threads_per_rank or max(1, cores // nproc)  # callers pass 1 (benchmarks/README.md, "Settings")
        ctx = mp.get_context("spawn")
        from rmrun.runtime.dist import free_port

        port = free_port()
        self.conns, self.procs = [], []
        for rank in range(nproc):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(rank, nproc, port, threads, child), daemon=True, name=f"bench-rank{rank}"
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self._collect(timeout=start_timeout)  # "ready" from every rank

    def run(self, job: str, *, timeout: float = 1800, **kwargs) -> list:
        for conn in self.conns:
            conn.send((job, kwargs))
        return self._collect(timeout=timeout)

    def _collect(self, *, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        results = [None] * self.nproc
        pending = set(range(self.nproc))
        while pending:
            for rank in sorted(pending):
                conn = self.conns[rank]
                if conn.poll(0.05):
                    try:
                        status, value = conn.recv()
                    except EOFError:
                        self._die(f"benchmark rank {rank} died (exit code {self._exitcode(rank)})")
                    if status == "error":
                        self._die(f"benchmark rank {rank} failed:\n{value}")
                    results[rank] = value
                    pending.discard(rank)
                elif not self.procs[rank].is_alive() and not conn.poll(0):
                    self._die(f"benchmark rank {rank} died (exit code {self._exitcode(rank)})")
            if pending and time.monotonic() > deadline:
                self._die(f"benchmark ranks {sorted(pending)} did not answer within {timeout:.0f}s")
        return results

    def _exitcode(self, rank: int):
        self.procs[rank].join(timeout=1)
        return self.procs[rank].exitcode

    def _die(self, message: str):
        self.close(force=True)
        raise WorkerError(message)

    def close(self, *, force: bool = False) -> None:
        if not force:
            for conn in self.conns:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            for proc in self.procs:
                proc.join(timeout=30)
        for proc in self.procs:  # only the processes this pool started
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        self.procs, self.conns = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(force=exc[0] is not None)


def _worker_main(rank: int, world: int, port: int, threads: int, conn) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    try:
        import warnings

        warnings.filterwarnings("ignore")
        import torch

        torch.set_num_threads(threads)
        from rmrun.runtime.dist import start, stop

        ranked = start(seed=0)
        conn.send(("ready", {"rank": ranked.rank, "threads": threads, "cuda": ranked.cuda}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    try:
        while True:
            message = conn.recv()
            if message is None:
                break
            job, kwargs = message
            try:
                conn.send(("ok", _job(job)(ranked, **kwargs)))
            except BaseException:
                conn.send(("error", traceback.format_exc()))
                break
    finally:
        stop()


# --------------------------------------------------------------------------- memory


def _reset_peak_gpu(ranked) -> None:
    if ranked.cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gpu(ranked) -> dict:
    """The CUDA caching allocator's peak of this process since the last reset (model, optimizer
    state, activations); {} on CPU."""
    if not ranked.cuda:
        return {}
    import torch

    torch.cuda.synchronize()
    return {
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()),
        "peak_gpu_reserved_bytes": int(torch.cuda.max_memory_reserved()),
    }


def _reset_peak_rss() -> bool:
    """Give freed heap pages back to the OS (glibc keeps them otherwise, so the RSS would stay
    at the largest variant's level) and reset the kernel's peak-RSS mark (VmHWM) of this
    process; False where the reset is not allowed (then peaks are since process start)."""
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_rss_kib() -> int:
    """VmHWM (peak RSS since the last reset), else ru_maxrss (peak since process start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --------------------------------------------------------------------------- building blocks


@cache
def _tokenizer():
    from benchmarks.data import load_tokenizer

    return load_tokenizer()


@lru_cache(maxsize=4)
def _dataset(num_pairs: int, seed: int, max_length: int, profile: str = "long-tailed"):
    from benchmarks.data import make_pairs, tokenize

    return tokenize(make_pairs(num_pairs, seed=seed, profile=profile), _tokenizer(), max_length=max_length)


def model_dir(size: str) -> str:
    """A model directory (config only) for ``size``: the shipped tiny one, or the small one written next to it."""
    from benchmarks.data import TINY_MODEL_DIR

    if size == "tiny":
        return str(TINY_MODEL_DIR)
    overrides = {"small": SMALL_OVERRIDES, "medium": MEDIUM_OVERRIDES}.get(size)
    if overrides is None:
        raise ValueError(f"unknown model size {size!r}")
    directory = os.path.join(tempfile.gettempdir(), f"rmrun-bench-{size}-llama-{os.getuid()}")
    os.makedirs(directory, exist_ok=True)
    with open(TINY_MODEL_DIR / "config.json") as f:
        config = json.load(f)
    config.update(overrides)
    path = os.path.join(directory, "config.json")
    text = json.dumps(config, indent=2, sort_keys=True)
    if not os.path.exists(path) or open(path).read() != text:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # ranks may write it at once
    return directory


def _sections(
    size: str,
    *,
    plugin: str,
    batch_size: int,
    max_length: int,
    group_by_length: bool,
    seed: int,
    cuda: bool = False,
    mixed_precision: str | None = None,
):
    from benchmarks.data import TOKENIZER_DIR
    from rmrun.recipe.schema import (
        DataSection,
        LossSection,
        ModelSection,
        PluginSection,
        Recipe,
        RunSection,
        ScheduleSection,
    )

    return Recipe(
        run=RunSection(name="bench", seed=seed),
        data=DataSection(train=("synthetic.jsonl",), max_length=max_length, group_by_length=group_by_length),
        model=ModelSection(pretrain=model_dir(size), tokenizer=str(TOKENIZER_DIR), init="random"),
        # By default: on a CPU ddp in fp32, on a GPU every plugin in bf16.
        plugin=PluginSection(
            name=plugin,
            mixed_precision=mixed_precision or ("fp32" if not PLUGINS[plugin].needs_cuda and not cuda else "bf16"),
        ),
        loss=LossSection(name="log_sig"),
        # The quickstart's optimisation settings; clipping on, as by default.
        schedule=ScheduleSection(max_epochs=1, batch_size=batch_size, lr=5e-4, weight_decay=0.01, grad_clip=1.0),
    )


def _pad_to_max_collate(tokenized, indices, *, pad_token_id: int, max_length: int):
    """ColossalChat's preference collator: every sequence right-padded to ``max_length``;
    chosen rows then rejected rows, so one forward covers both sides."""
    import numpy as np
    import torch

    sequences = [tokenized.chosen(i) for i in indices] + [tokenized.rejected(i) for i in indices]
    input_ids = np.full((len(sequences), max_length), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), max_length), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "pair_ids": torch.from_numpy(tokenized.pair_index[np.asarray(indices, dtype=np.int64)].astype(np.int64)),
    }


def _colossalchat_trainer_class():
    from rmrun.train.trainer import Trainer

    class PadToMaxTrainer(Trainer):
        """rmrun's Trainer with ColossalChat's batching (the only thing that differs)."""

        max_length = 512

        def _forward(self, indices, data):
            batch = _pad_to_max_collate(data, indices, pad_token_id=self.pad_id, max_length=self.max_length)
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            rewards = self.read_rewards(self.boosted.model, ids, mask).float()
            half = len(indices)
            return rewards[:half], rewards[half:], batch, int(mask.sum())

    return PadToMaxTrainer


class HandLoop:
    """The hand-written baseline: what a careful user writes in plain PyTorch."""

    def __init__(self, net, *, data, pad_id: int, schedule, plan, device, world_size: int):
        import torch

        from rmrun.model.boost import warmup_cosine  # the same LR curve, so losses stay comparable

        net = net.to(device)
        if world_size > 1:
            net = torch.nn.parallel.DistributedDataParallel(net)
        self.model = net
        self.data = data
        self.pad_id = pad_id
        self.device = device
        self.world_size = world_size
        self.grad_clip = schedule.grad_clip
        params = [p for p in net.parameters() if p.requires_grad]
        decay = [p for n, p in net.named_parameters() if p.requires_grad and p.ndim >= 2 and "norm" not in n.lower()]
        decay_ids = {id(p) for p in decay}
        groups = [
            {"params": decay, "weight_decay": schedule.weight_decay},
            {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0},
        ]
        # fused on the CPU, as rmrun's: the same arithmetic, so the losses can be compared exactly
        fused = True if device.type == "cpu" else None
        self.optimizer = torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)
        # Clip what the optimizer steps, in its order (the global norm's summation order, and so
        # the last bits of the clipped gradients, follow it): rmrun does the same, so both
        # trajectories stay bit-identical and every later step is still like for like.
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(warmup_steps=plan.warmup_steps, total_steps=plan.total_steps)
        )

    def step(self, indices) -> tuple[float, int]:
        import torch
        import torch.nn.functional as F

        from rmrun.data import collate

        batch = collate(self.data, indices, pad_token_id=self.pad_id)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        rewards = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.squeeze(-1).float()
        half = len(indices)
        loss = -F.logsigmoid(rewards[:half] - rewards[half:]).mean()  # DDP averages over ranks
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return float(loss), int(mask.sum())


def _use_pair_attention(net) -> None:
    from rmrun.model.pair_attention import ATTENTION, register

    register()
    net.config._attn_implementation = ATTENTION


def _build_rmrun_trainer(ranked, net, recipe, plan, data, *, cls=None, forward: str = "", pack_pairs: bool = False):
    """rmrun's trainer through rmrun's own builder; a variant's forward (the standard one unless
    ``forward`` names another) and packing are the plan's and the data section's, as in a run."""
    import dataclasses

    from rmrun.model.boost import boost
    from rmrun.recipe.backbone import STANDARD
    from rmrun.train.build import build_trainer

    boosted = boost(net, plan=plan, plugin=recipe.plugin, schedule=recipe.schedule, cuda=ranked.cuda)
    return build_trainer(
        boosted,
        pairs=data,
        tokenizer=_tokenizer(),
        plan=dataclasses.replace(plan, forward=forward or STANDARD),
        rank=ranked,
        seed=recipe.run.seed,
        schedule=recipe.schedule,
        loss=recipe.loss,
        data=dataclasses.replace(recipe.data, pack_pairs=pack_pairs),
        cls=cls,
    )


# --------------------------------------------------------------------------- the train job


def train_job(
    ranked,
    *,
    size: str,
    plugin: str = "ddp",
    variants=VARIANTS,
    max_rounds: int,
    min_rounds: int = 2,
    budget_seconds: float = 1e9,
    colossalchat_every: int = 1,
    warmup: bool = True,
    memory_probe: bool = True,
    num_pairs: int,
    profile: str = "long-tailed",
    batch_size: int,
    max_length: int = 512,
    seed: int = 0,
    checkpoint_rounds: int = 0,
    mixed_precision: str | None = None,
) -> dict:
    """Round-robin optimizer steps of each variant, then checkpoint save/load timings.

    Round 0 is a warm-up (first-step costs: optimizer state, DDP's first iteration) and is
    flagged, not counted, unless ``warmup`` is False (the smoke run). Then rounds run until
    ``max_rounds``, or until ``budget_seconds`` have passed once ``min_rounds`` are done.
    ``colossalchat`` (whose steps all cost about the same: everything is padded to
    max_length) takes part in every ``colossalchat_every``-th round. Peak memory comes from an
    untimed probe step per variant, or (``memory_probe=False``, the smoke run) from the timed
    steps themselves.
    Returns this rank's raw records; the caller aggregates over ranks.
    """
    import numpy as np
    import torch

    from rmrun.data.share import shared_lengths, shared_prefix_lengths
    from rmrun.model.model import build_reward_model
    from rmrun.recipe.plan import make_plan

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}")
    data = _dataset(num_pairs, seed, max_length, profile)
    tokenizer = _tokenizer()
    lengths = data.lengths()
    shared_rows = shared_lengths(data, shared_prefix_lengths(data))  # token positions of a shared-prompt row
    recipe = _sections(
        size,
        plugin=plugin,
        batch_size=batch_size,
        max_length=max_length,
        group_by_length=True,
        seed=seed,
        cuda=ranked.cuda,
        mixed_precision=mixed_precision,
    )
    plan = make_plan(recipe, world_size=ranked.world_size, num_pairs=len(data), cuda=ranked.cuda)
    base = build_reward_model(recipe.model, tokenizer=tokenizer, seed=seed)
    num_params = sum(p.numel() for p in base.parameters())
    runners, schedules = _build_variants(
        ranked,
        variants,
        base=base,
        data=data,
        recipe=recipe,
        plan=plan,
        pad_id=tokenizer.pad_token_id,
        size=size,
        plugin=plugin,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
    )
    del base
    steps = _VariantSteps(
        runners=runners, schedules=schedules, lengths=lengths, shared_rows=shared_rows, max_length=max_length
    )

    memory: dict = {}
    gc.collect()
    gc.disable()  # no collector pauses inside timed steps; collected between rounds instead
    try:
        records, can_reset, measure_seconds = _timed_rounds(
            steps,
            ranked,
            memory=memory,
            memory_probe=memory_probe,
            warmup=warmup,
            max_rounds=max_rounds,
            min_rounds=min_rounds,
            budget_seconds=budget_seconds,
            colossalchat_every=colossalchat_every,
        )
        if memory_probe:
            can_reset = _probe_memory(steps, ranked, memory=memory) and can_reset
    finally:
        gc.enable()

    result = {
        "rank": ranked.rank,
        "world_size": ranked.world_size,
        "threads": torch.get_num_threads(),
        "num_params": num_params,
        "records": records,
        "memory": memory,
        "peak_reset": can_reset,
        "measure_seconds": measure_seconds,
        "autocast": plan.autocast,
        "profile": profile,
        "sequence_lengths": {
            "mean": float(lengths.mean()),
            "p50": float(np.percentile(lengths, 50)),
            "p90": float(np.percentile(lengths, 90)),
            "max": int(lengths.max()),
            "truncated": int(data.stats.get("truncated", 0)),
            "pairs": len(data),
        },
    }
    if checkpoint_rounds and "rmrun" in runners:
        result["checkpoint"] = checkpoint_timings(ranked, runners["rmrun"], rounds=checkpoint_rounds)
    runners.clear()
    gc.collect()
    return result


def _build_variants(
    ranked,
    variants,
    *,
    base,
    data,
    recipe,
    plan,
    pad_id: int,
    size: str,
    plugin: str,
    batch_size: int,
    max_length: int,
    seed: int,
) -> tuple[dict, dict]:
    """({variant: its trainer or loop}, {variant: its epoch's optimizer steps}), each on a copy of ``base``."""
    from rmrun.recipe.backbone import SHARED

    runners, schedules = {}, {}
    if "rmrun" in variants or "hand" in variants or "shared" in variants:
        rmrun_trainer = _build_rmrun_trainer(ranked, copy.deepcopy(base), recipe, plan, data)
        rmrun_steps = list(rmrun_trainer.steps_of_epoch(0))  # rmrun's sampler: length-grouped batches
        if "rmrun" in variants:
            runners["rmrun"], schedules["rmrun"] = rmrun_trainer, rmrun_steps
    if "hand" in variants:
        runners["hand"] = HandLoop(
            copy.deepcopy(base),
            data=data,
            pad_id=pad_id,
            schedule=recipe.schedule,
            plan=plan,
            device=rmrun_trainer.device,
            world_size=ranked.world_size,
        )
        schedules["hand"] = rmrun_steps  # exactly the batches rmrun takes
    for variant in ("dense", "shared", "packed"):
        if variant in variants:
            net = copy.deepcopy(base)
            if variant != "dense":  # as a run builds it: the pair attention (used on CUDA)
                _use_pair_attention(net)
            runners[variant] = _build_rmrun_trainer(
                ranked, net, recipe, plan, data, forward=SHARED, pack_pairs=variant == "packed"
            )
            schedules[variant] = list(runners[variant].steps_of_epoch(0))  # grouped by the shared length
    if "colossalchat" in variants:
        cc_recipe = _sections(
            size,
            plugin=plugin,
            batch_size=batch_size,
            max_length=max_length,
            group_by_length=False,
            seed=seed,
            cuda=ranked.cuda,
        )
        cls = _colossalchat_trainer_class()
        cls.max_length = max_length
        cc_trainer = _build_rmrun_trainer(ranked, copy.deepcopy(base), cc_recipe, plan, data, cls=cls)
        runners["colossalchat"] = cc_trainer
        schedules["colossalchat"] = list(cc_trainer.steps_of_epoch(0))  # random batches
    return runners, schedules


class _VariantSteps:
    """The variants taking part (in ``VARIANTS`` order): one optimizer step of each, and what a
    batch costs each in token positions."""

    def __init__(self, *, runners: dict, schedules: dict, lengths, shared_rows, max_length: int):
        self.runners = runners
        self.schedules = schedules
        self.lengths = lengths  # (pairs, 2) token counts
        self.shared_rows = shared_rows  # token positions of each pair's shared-prompt row
        self.max_length = max_length
        self.order = [v for v in VARIANTS if v in runners]

    def run_step(self, variant, step) -> float:
        indices = step.micro_batches[0].indices  # accumulation_steps = 1
        if variant == "hand":
            loss, _ = self.runners["hand"].step(indices)
            return loss
        trainer = self.runners[variant]
        line = trainer.optimizer_step(step)
        trainer.advance(step, line)
        return line.get("loss", float("nan"))

    def padded_length(self, variant, indices) -> int:
        """Token positions per padded row (two rows per pair, except ``shared``: one)."""
        if variant == "colossalchat":
            return self.max_length
        if variant in ("dense", "shared", "packed"):
            return int(self.shared_rows[indices].max()) if len(indices) else 0
        return int(self.lengths[indices].max()) if len(indices) else 0

    def positions(self, variant, indices) -> tuple[int, int]:
        """(real token positions the forward runs, padded positions) of a batch."""
        from rmrun.data.share import pack_rows

        longest = self.padded_length(variant, indices)
        shared_rows = self.shared_rows
        if variant == "packed":
            return int(shared_rows[indices].sum()), len(
                pack_rows(shared_rows[indices].tolist(), capacity=longest)
            ) * longest
        if variant in ("dense", "shared"):
            return int(shared_rows[indices].sum()), len(indices) * longest
        return int(self.lengths[indices].sum()), 2 * len(indices) * longest


def _timed_rounds(
    steps: _VariantSteps,
    ranked,
    *,
    memory: dict,
    memory_probe: bool,
    warmup: bool,
    max_rounds: int,
    min_rounds: int,
    budget_seconds: float,
    colossalchat_every: int,
) -> tuple[dict, bool, float]:
    """Round-robin timed steps: ({variant: its step records}, whether the peak RSS could be reset
    before each step, the seconds they took). Without ``memory_probe`` each step's peak memory
    goes into ``memory``."""
    from rmrun.runtime.collective import broadcast

    records: dict = {v: [] for v in steps.order}
    taken = {v: 0 for v in steps.order}
    can_reset, rotations = True, {}
    began = time.monotonic()
    round_index = 0
    while True:
        present = [v for v in steps.order if v != "colossalchat" or round_index % colossalchat_every == 0]
        # Rotate the order among the rounds that have this same set of variants, so that each
        # variant goes first, second, ... equally often (whatever colossalchat_every is).
        seen = rotations.get(tuple(present), 0)
        rotations[tuple(present)] = seen + 1
        shift = seen % len(present)
        for variant in present[shift:] + present[:shift]:
            schedule = steps.schedules[variant]
            step = schedule[taken[variant] % len(schedule)]
            taken[variant] += 1
            if not memory_probe:
                can_reset = _reset_peak_rss() and can_reset
                before = _rss_kib()
                _reset_peak_gpu(ranked)
            started, cpu_started = time.perf_counter(), time.process_time()
            loss = steps.run_step(variant, step)
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
            indices = step.micro_batches[0].indices
            real, padded = steps.positions(variant, indices)
            if not memory_probe:
                memory[variant] = {
                    "peak_rss_kib": _peak_rss_kib(),
                    "rss_before_kib": before,
                    "padded_length": steps.padded_length(variant, indices),
                    **_peak_gpu(ranked),
                }
            records[variant].append(
                {
                    "round": round_index,
                    "warmup": warmup and round_index == 0,
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "pairs": int(step.pairs),
                    "local_pairs": int(len(indices)),
                    # the pairs' own tokens (both sides, prompt in each), whichever forward runs
                    "tokens": int(steps.lengths[indices].sum()),
                    "positions": real,
                    "padded": padded,
                    "loss": float(loss),
                }
            )
        gc.collect()
        round_index += 1
        timed = round_index - 1 if warmup else round_index  # rounds after the warm-up
        go_on = timed < max_rounds and (timed < min_rounds or time.monotonic() - began < budget_seconds)
        if ranked.world_size > 1:  # rank 0 decides, so every rank runs the same collectives
            go_on = broadcast(go_on if ranked.is_main else None)
        if not go_on:
            break
    return records, can_reset, time.monotonic() - began


def _probe_memory(steps: _VariantSteps, ranked, *, memory: dict) -> bool:
    """Peak memory, untimed, into ``memory``: one more step of each variant on its largest batch
    of the epoch (what bounds a real run's peak), with freed heap pages returned to the OS and
    the kernel's high-water mark reset just before; whether every reset worked. Not done in the
    timed steps: re-faulting the returned pages would be timed too."""
    can_reset = True
    for variant in steps.order:
        schedule = steps.schedules[variant]
        largest = max(
            schedule,
            key=lambda st: steps.padded_length(variant, st.micro_batches[0].indices) * len(st.micro_batches[0].indices),
        )
        gc.collect()
        can_reset = _reset_peak_rss() and can_reset
        before = _rss_kib()
        _reset_peak_gpu(ranked)
        steps.run_step(variant, largest)
        memory[variant] = {
            "peak_rss_kib": _peak_rss_kib(),
            "rss_before_kib": before,
            "padded_length": steps.padded_length(variant, largest.micro_batches[0].indices),
            **_peak_gpu(ranked),
        }
    return can_reset


JOBS = {"train": train_job}


def _job(name: str):
    """A job of ``JOBS``, or ``"module:function"``: a benchmark module's own job, run in a rank."""
    if name in JOBS:
        return JOBS[name]
    import importlib

    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)
