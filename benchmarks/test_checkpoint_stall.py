"""Training time lost per checkpoint on a store throttled to a fixed bandwidth: background
uploads (``checkpoint.async_upload = true``, the default) against blocking ones.

``benchmarks.checkpoint_stall`` runs the quickstart recipe for ``STALL_STEPS`` steps with a
checkpoint every ``STALL_INTERVAL`` steps, its state on ``throttled://`` (``STALL_BYTES_PER_SECOND``),
in a fresh process per run, rounds alternating none / blocking / background. The goal
(background stall ≤ 25 % of the blocking stall) is reported, not enforced.
"""

from __future__ import annotations

from benchmarks import settings
from benchmarks.checkpoint_stall import VARIANTS, measure
from benchmarks.metrics import summarize_stall


def test_checkpoint_stall(benchmark, tmp_path):
    runs = {variant: [] for variant in VARIANTS}

    def measure_rounds():
        for _ in range(settings.STALL_ROUNDS):
            for variant in VARIANTS:
                runs[variant].append(
                    measure(
                        variant,
                        workdir=tmp_path,
                        total_steps=settings.STALL_STEPS,
                        interval=settings.STALL_INTERVAL,
                        bytes_per_second=settings.STALL_BYTES_PER_SECOND,
                        threads=settings.THREADS_PER_RANK,
                    )
                )

    benchmark.pedantic(measure_rounds, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "checkpoint_stall"
    summary = summarize_stall(
        runs,
        total_steps=settings.STALL_STEPS,
        interval=settings.STALL_INTERVAL,
        bytes_per_second=settings.STALL_BYTES_PER_SECOND,
    )
    for variant in ("blocking", "background"):
        checkpoints = summary["variants"][variant]["checkpoints"]
        assert len(checkpoints) == summary["periodic_checkpoints"] * summary["rounds"], checkpoints
        assert all(c["snapshot_seconds"] is not None and c["upload_seconds"] is not None for c in checkpoints)
    benchmark.extra_info.update({"kind": "checkpoint_stall", **summary})
