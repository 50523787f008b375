"""The TRL side-by-side benchmark's summary and markdown, from given step records; no run."""

from __future__ import annotations


def test_trl_side_by_side_rates_and_goal_line():
    from benchmarks.trl_side_by_side import markdown, summarize

    steps = [{"seconds": 0.5, "cpu_seconds": 0.25, "tokens": 250, "padded": 500}] * 4
    trl = summarize(steps, peak_rss_mib=800)
    assert trl["pairs_per_second"] == 16 and trl["pairs_per_cpu_second"] == 32 and trl["padding_fraction"] == 0.5
    assert trl["tokens_per_second"] == 500 and trl["median_step_ms"] == 500

    def rate(tokens_per_second):
        return dict(trl, tokens_per_second=tokens_per_second)

    result = {
        "machine": {"label": "m", "cpu_model": "cpu", "cores": 2, "torch": "t", "transformers": "x"},
        "profile": "long-tailed",
        "size": "small",
        "chunks": 1,
        "pairs": 40,
        "steps_per_epoch": 5,
        "epoch_tokens": 1250,
        "seconds": 1.0,
        "trl_versions": {"trl": "1", "transformers": "5", "torch": "2"},
        "systems": {
            "trl-tuned": rate(500),
            "trl-defaults": rate(250),
            "rmrun-bf16": rate(600),
            "shared-bf16": rate(700),
        },
        "default": "shared-bf16",
        "default_reason": "why",
    }
    text = markdown(result)
    assert "shared-prompt forward, bf16 (the recipe defaults) / TRL tuned: 1.40× non-padding tokens/s" in text
    assert "(goal ≥ 1.3×: **MET**)" in text
    assert "standard forward, bf16 / TRL tuned: 1.20× non-padding tokens/s, 1.00× pairs/CPU-s\n" in text
    assert "/ TRL with its defaults: 2.80×" in text
    result["systems"]["shared-bf16"] = rate(600)
    assert "(goal ≥ 1.3×: **MISSED**)" in markdown(result)
    assert "goal" not in markdown(dict(result, size="tiny")).split("| steps |")[1].split("Same pairs")[0]


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
