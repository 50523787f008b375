"""Resident memory per rank for the token arrays, loaded against mapped (``benchmarks.token_memory``).
The goal (mapped: anonymous memory grows by under 5 % of the file) is checked."""

from __future__ import annotations

from benchmarks import settings
from benchmarks.token_memory import VARIANTS, measure, write_split


def test_token_memory(benchmark, tmp_path):
    path = str(tmp_path / "train.safetensors")
    file_bytes = write_split(path, num_pairs=settings.MEMORY_PAIRS)
    grown = {}

    def measure_variants():
        for variant in VARIANTS:
            grown[variant] = measure(variant, path=path)

    benchmark.pedantic(measure_variants, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "token_memory"
    file_mib = file_bytes / 2**20
    assert grown["load"]["RssAnon"] > 0.8 * file_mib, grown  # the control: loading copies every token
    assert grown["map"]["RssAnon"] < 0.05 * file_mib, grown
    benchmark.extra_info.update(
        {"kind": "token_memory", "pairs": settings.MEMORY_PAIRS, "file_mib": file_mib, "grown_mib": grown}
    )
