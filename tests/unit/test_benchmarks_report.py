"""The TRL side-by-side benchmark's summary and markdown, from given step records; no run."""

from __future__ import annotations


def test_trl_side_by_side_rates_and_goal_line():
    from benchmarks.trl_side_by_side import markdown, summarize

    trl = summarize(
        [{"seconds": 0.5, "cpu_seconds": 0.25}] * 4, pairs_per_step=8, tokens=1000, padded=2000, peak_rss_mib=800
    )
    assert trl["pairs_per_second"] == 16 and trl["pairs_per_cpu_second"] == 32 and trl["padding_fraction"] == 0.5
    assert trl["tokens_per_second"] == 500 and trl["median_step_ms"] == 500
    fast = dict(trl, pairs_per_second=48.0, pairs_per_cpu_second=96.0)
    slow = dict(trl, pairs_per_second=32.0, pairs_per_cpu_second=64.0)
    result = {
        "machine": {"label": "m", "cpu_model": "cpu", "cores": 2, "torch": "t", "transformers": "x"},
        "profile": "long-tailed",
        "size": "tiny",
        "chunks": 1,
        "steps_per_chunk": 4,
        "seconds": 1.0,
        "trl_versions": {"trl": "1", "transformers": "5", "torch": "2"},
        "systems": {"trl": trl, "rmrun": slow, "shared": fast},
    }
    text = markdown(result)
    assert "standard forward / TRL: 2.00× pairs/s, 2.00× pairs/CPU-s (goal ≥ 2.5× on long-tailed data: MISSED" in text
    assert "(the default) / TRL: 3.00× pairs/s, 3.00× pairs/CPU-s (goal ≥ 2.5× on long-tailed data: MET" in text
