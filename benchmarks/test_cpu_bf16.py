"""ddp in bf16 on the CPU against fp32: pairs/s of rmrun's own step on the small Llama reward model,
both precisions stepped side by side in one worker process, and a ``torch.profiler`` table of one
step of each (``benchmarks/cpu_bf16.py`` says how). The goal (bf16 >= 1.8x fp32 pairs/s) is
reported, not enforced. Results: ``benchmarks/results/cpu-bf16-<machine>.md``.
"""

from __future__ import annotations

import os

import pytest

from benchmarks import machine, settings
from benchmarks.cpu_bf16 import VARIANTS, summarize

SIZE = "small"
ROUNDS = 1 if settings.SMOKE else 40
NUM_PAIRS = 200 if settings.SMOKE else settings.TRAIN_PAIRS


def test_cpu_bf16(benchmark, pools, cuda_available):
    from rmrun.runtime.machine import cpu_bf16_kernels

    if cuda_available:
        pytest.skip("a CPU benchmark: on a CUDA machine ddp autocasts on the GPU")
    if cpu_bf16_kernels() is None:
        pytest.skip("torch has no oneDNN bf16 kernels on this CPU: rmrun refuses bf16 on it")
    raw: dict = {}

    def measure():
        [raw["rank0"]] = pools.get(1).run(
            "benchmarks.cpu_bf16:precision_job",
            size=SIZE,
            num_pairs=NUM_PAIRS,
            batch_size=settings.BATCH_SIZE,
            max_length=settings.MAX_LENGTH,
            rounds=ROUNDS,
        )

    benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "cpu_bf16"
    result = raw["rank0"]
    summary = summarize(result)
    assert result["autocast"] == {"fp32": None, "bf16": "bf16"}
    assert result["weight_dtypes"] == ["torch.float32"]
    assert all(summary["variants"][v]["steps"] == ROUNDS for v in VARIANTS)
    benchmark.extra_info.update(
        {
            "kind": "cpu_bf16",
            "machine": machine.info(),
            "size": SIZE,
            "rounds": ROUNDS,
            "batch_size": settings.BATCH_SIZE,
            "max_length": settings.MAX_LENGTH,
            "note": os.environ.get("BENCH_NOTE", ""),
            **result,
            "summary": summary,
        }
    )
