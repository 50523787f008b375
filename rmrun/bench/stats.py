"""Small statistics shared by ``rmrun bench`` and the project's own benchmarks (no torch here)."""

from __future__ import annotations

import random
import statistics


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[1], q[2]


def bootstrap_median_ci(
    values: list[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (deterministic)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    return medians[int(tail * resamples)], medians[min(resamples - 1, int((1 - tail) * resamples))]


def model_flops_utilization(
    *, num_params: int, tokens_per_second: float, world_size: int, peak_flops: float | None
) -> float | None:
    """MFU: 6 × parameters × tokens/s (forward + backward of the dense layers; attention's
    quadratic term left out, as is usual) over the peak of all the GPUs in use."""
    if not peak_flops:
        return None
    return 6 * num_params * tokens_per_second / (peak_flops * world_size)
