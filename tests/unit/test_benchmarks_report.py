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


def _checkpoint_ranks(**extra) -> list[dict]:
    """Two ranks' checkpoint timings of two rounds (rank 1 the slower in round 2)."""
    ranks = [
        {"save_seconds": [2.0, 3.0], "load_seconds": [1.0, 1.0], "bytes": 10**9},
        {"save_seconds": [2.0, 4.0], "load_seconds": [1.0, 2.0], "bytes": 10**9},
    ]
    for rank, values in zip(ranks, extra.get("background", [])):
        rank.update(values)
    return [{"checkpoint": r} for r in ranks]


def _train_doc(checkpoint: dict) -> dict:
    return {
        "benchmarks": [
            {"extra_info": {"kind": "train", "plugin": "ddp", "nproc": 2, "model": "tiny", "checkpoint": checkpoint}}
        ]
    }


def test_checkpoint_overhead_goal_is_the_default_upload_modes():
    from benchmarks.metrics import GOALS, _checkpoint_summary, default_async_upload
    from benchmarks.report import _checkpoint, _goal_rows

    background = [
        {
            "snapshot_seconds": [0.1, 0.1],
            "upload_wait_seconds": [2.0, 3.0],
            "commit_seconds": [0.05, 0.05],
            "stall_seconds": [0.15, 0.15],
            "commit_wait_seconds": [2.05, 3.05],
        },
        {
            "snapshot_seconds": [0.1, 0.2],
            "upload_wait_seconds": [2.0, 3.0],
            "commit_seconds": [0.05, 0.1],
            "stall_seconds": [0.15, 0.3],
            "commit_wait_seconds": [2.05, 3.1],
        },
    ]
    ck = _checkpoint_summary(_checkpoint_ranks(background=background), 0.1, 100)
    assert ck["save_seconds"] == [2.0, 4.0] and ck["save_median_s"] == 3.0
    assert [round(s, 9) for s in ck["stall_seconds"]] == [0.15, 0.3] and ck["upload_overrun_s"] == 0.0
    assert abs(ck["blocking_overhead_pct"] - 100 * 3.0 / 13.0) < 1e-9
    assert abs(ck["background_overhead_pct"] - 100 * 0.225 / 10.225) < 1e-9
    assert ck["async_upload"] is default_async_upload() is True
    assert ck["overhead_pct"] == ck["background_overhead_pct"] <= GOALS["checkpoint_overhead_pct"]
    (row,) = _goal_rows(_train_doc(ck))
    assert row[2] == "2.20 % (background upload; blocking save: 23.08 %)" and row[4] is True
    table = "\n".join(_checkpoint(_train_doc(ck)))
    assert "background upload (default): training waits (median)" in table
    assert "| 225 ms (snapshot 150 + commit 75) | 2.20 % | 2500 ms | 3000 ms | 23.08 % | 1500 ms |" in table

    # An upload longer than the interval: the next checkpoint waits for the rest of it.
    slow = _checkpoint_summary(_checkpoint_ranks(background=background), 0.02, 100)
    assert abs(slow["upload_overrun_s"] - 0.5) < 1e-9 and abs(slow["background_lost_s"] - 0.725) < 1e-9
    (row,) = _goal_rows(_train_doc(slow))
    assert row[4] is False and "the next checkpoint waits 0.50 s for it" in row[5]


def test_checkpoint_results_without_background_timings_render_as_before():
    from benchmarks.metrics import _checkpoint_summary
    from benchmarks.report import _checkpoint, _goal_rows

    ck = _checkpoint_summary(_checkpoint_ranks(), 0.1, 100)
    assert "stall_median_s" not in ck and ck["overhead_pct"] == ck["blocking_overhead_pct"]
    old = {k: v for k, v in ck.items() if k != "blocking_overhead_pct"}  # a result file from before
    (row,) = _goal_rows(_train_doc(old))
    assert row[2] == "23.08 %" and row[5].startswith("one save takes 3.00 s vs a 100 ms mean step: 1000 MB")
    table = _checkpoint(_train_doc(old))
    assert "| ddp | 2 | tiny | 1000.0 MB | 3000 ms | 1500 ms | 100 ms | 23.08 % (every 100 steps) |" in table
