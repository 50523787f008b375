"""The scale benchmark's measurement (benchmarks/scale.py) on a tiny N: what it reads from the
runs and the state is there, and 1 and 2 ranks tokenize the same arrays. Never asserts a timing."""

from __future__ import annotations

import datetime

from benchmarks.scale import markdown, measure, summarize
from rmrun.runtime.machine import info


def test_the_scale_measurement_reads_every_figure_and_two_ranks_match_one(tmp_path):
    points = [measure(tmp_path / f"{n}-{r}", pairs=n, ranks=r) for n, r in ((120, 1), (120, 2), (240, 2))]
    for p in points:
        assert p["tokenize_pairs_per_second"] > 0 and p["tokens"] > 0
        assert p["peak_rss_mb_first"] > 100 and p["peak_rss_mb_resume"] > 100, p  # a process with torch in it
        assert 0 < p["resume_to_first_step_seconds"] < p["resume_seconds"]
        assert 0 < p["save_seconds"] < p["resume_seconds"]
        assert p["state_bytes"] > p["tokens"] * 4
    summary = summarize(points)
    assert summary["identical_arrays"] is True
    assert points[1]["train_sha256"] != points[2]["train_sha256"], "the control: other data, other arrays"
    assert summary["growth"]["ranks"] == 2 and summary["growth"]["to"] == 240
    text = markdown(
        {"machine": info(), "date": datetime.date.today().isoformat(), "points": points, "summary": summary}
    )
    assert "| 240 | 2 |" in text and "tokenize, 2 ranks / 1 rank at 120 pairs" in text
