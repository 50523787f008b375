"""ddp in bf16 on the CPU against fp32: per-step time of the small Llama reward model (hidden
256, 4 layers) with rmrun's forward context (``rmrun.model.boost.autocast_context``, as ``Boosted`` runs it: ``torch.autocast`` on
the CPU, fp32 master weights and AdamW), stepped side by side in one process.

Both copies start from the same weights and take the same batch (16 pairs = 32 rows of 384
tokens), one optimizer step each per round, the order alternating every round; round 0 is a
warm-up. A ``torch.profiler`` pass over one step of each gives the top operators by CPU time.
Results: ``benchmarks/results/cpu-bf16-<machine>.md``.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from benchmarks import machine, settings

VARIANTS = ("fp32", "bf16")
ROWS, LENGTH = 32, 384
ROUNDS = 2 if settings.SMOKE else 30
TOP_OPERATORS = 15


def _wrapped():
    from benchmarks.harness import model_dir
    from rmrun.model.model import build_reward_model, load_tokenizer
    from rmrun.recipe import load_recipe
    from tests.helpers import QUICKSTART

    quickstart = load_recipe(QUICKSTART).model
    model = type(quickstart)(pretrain=model_dir("small"), tokenizer=quickstart.tokenizer, init="random")
    net = build_reward_model(model, tokenizer=load_tokenizer(model), seed=0)
    ddp = torch.nn.parallel.DistributedDataParallel(net, broadcast_buffers=False)
    return ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-4)


def _context(variant: str):
    from rmrun.model.boost import autocast_context

    return autocast_context(torch.bfloat16 if variant == "bf16" else None, device="cpu")


def _step(ddp, optimizer, input_ids, variant: str) -> float:
    start = time.perf_counter()
    with _context(variant):
        logits = ddp(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
    rewards = logits[:, 0].float()
    loss = -torch.nn.functional.logsigmoid(rewards[0::2] - rewards[1::2]).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _profile(ddp, optimizer, input_ids, variant: str) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _step(ddp, optimizer, input_ids, variant)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPERATORS]
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "calls": e.count} for e in events]


def test_cpu_bf16(benchmark, process_group):
    from rmrun.runtime.machine import cpu_bf16_units

    if cpu_bf16_units() is None:
        pytest.skip("this CPU has no bf16 matrix units (amx_bf16, avx512_bf16): rmrun refuses bf16 on it")
    torch.set_num_threads(settings.THREADS_PER_RANK)
    models = {variant: _wrapped() for variant in VARIANTS}
    input_ids = torch.randint(4, 1000, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}

    def rounds():
        for index in range(ROUNDS + 1):
            for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
                seconds = _step(*models[variant], input_ids, variant)
                if index > 0:
                    times[variant].append(seconds)

    benchmark.pedantic(rounds, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "cpu_bf16"
    summary = {
        variant: {
            "median_ms": 1000 * statistics.median(times[variant]),
            "mean_ms": 1000 * statistics.fmean(times[variant]),
            "min_ms": 1000 * min(times[variant]),
            "pairs_per_second": (ROWS // 2) / statistics.median(times[variant]),
            "step_seconds": times[variant],
            "profile": _profile(*models[variant], input_ids, variant),
        }
        for variant in VARIANTS
    }
    benchmark.extra_info.update(
        {
            "kind": "cpu_bf16",
            "machine": machine.label(),
            "cpu": machine.cpu_model(),
            "bf16_units": cpu_bf16_units(),
            "threads": settings.THREADS_PER_RANK,
            "rounds": ROUNDS,
            "rows": ROWS,
            "length": LENGTH,
            "bf16_over_fp32_pairs_per_second": summary["bf16"]["pairs_per_second"]
            / summary["fp32"]["pairs_per_second"],
            **summary,
        }
    )
    assert len(times["fp32"]) == len(times["bf16"]) == ROUNDS
