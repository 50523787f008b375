"""``rmrun bench`` end to end, in a subprocess: an out-of-memory reported and the sweep going on,
isolation from the recipe's real state, the files' contents, and every rank measuring under torchrun.
No timing is asserted."""

from __future__ import annotations

import json
import os

import pytest

from rmrun.bench.report import markdown, terminal_table
from tests.helpers import QUICKSTART, child_env, rmrun

# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One short sweep: the batch-8 combination is capped into an out-of-memory (the test hook),
    batch 4 runs after it, zero2 is skipped (no CUDA here). The recipe's state has a sentinel."""
    tmp = tmp_path_factory.mktemp("bench")
    real_state = tmp / "real-state"
    real_state.mkdir()
    (real_state / "sentinel").write_text("untouched")
    out = tmp / "out"
    result = rmrun(
        "bench",
        QUICKSTART,
        "--sweep",
        "schedule.batch_size=8,4",
        "--sweep",
        "plugin.name=ddp,zero2",
        "--set",
        f"run.state={real_state}",
        "--steps",
        "2",
        "--rounds",
        "1",
        "--pairs",
        "48",
        "--out",
        str(out),
        env=child_env(RMRUN_BENCH_MEMORY_CAP="batch_size=8:0"),
        timeout=300,
    )
    return result, out, real_state


def test_bench_ranks_what_ran_and_reports_the_rest(bench_run):
    result, _, _ = bench_run
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "schedule.batch_size=8 plugin.name=ddp: out of memory" in out
    assert "skipped: schedule.batch_size=4 plugin.name=zero2: needs CUDA" in out
    assert "recommendation: fastest that fits: schedule.batch_size=4 plugin.name=ddp" in out


def test_the_recipes_real_state_is_untouched(bench_run):
    result, _, real_state = bench_run
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(real_state)) == ["sentinel"]
    assert (real_state / "sentinel").read_text() == "untouched"


def test_the_json_holds_every_raw_number_and_the_machine(bench_run):
    result, out, _ = bench_run
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["machine"]["torch"] and report["machine"]["cpu_model"]
    assert report["world_size"] == 1
    assert report["sample"][0]["pairs"] == 48
    by_label = {c["label"]: c for c in report["combinations"]}
    assert by_label["schedule.batch_size=8 plugin.name=ddp"]["status"] == "out of memory"
    assert by_label["schedule.batch_size=8 plugin.name=zero2"]["status"] == "skipped"
    ran = by_label["schedule.batch_size=4 plugin.name=ddp"]
    assert ran["status"] == "ok" and ran["rank"] == 1
    summary = ran["summary"]
    assert len(summary["step_seconds"]) == 2 and len(summary["raw"][0][0]["records"]) == 2
    assert all(r["pairs"] == 4 for r in summary["raw"][0][0]["records"])
    assert 0 <= summary["padding_fraction"] < 1
    assert summary["peak_rss_mib_per_process"] > 0
    assert summary["checkpoint"]["bytes"] > 0
    assert report["ranking"] == ["schedule.batch_size=4 plugin.name=ddp"]


def test_the_markdown_and_the_plot(bench_run):
    result, out, _ = bench_run
    assert result.returncode == 0, result.stderr
    md = (out / "bench.md").read_text()
    assert "| 1 | schedule.batch_size=4 plugin.name=ddp |" in md
    assert "| schedule.batch_size=8 plugin.name=ddp | out of memory | out of memory (" in md
    assert "**Recommendation:** fastest that fits: schedule.batch_size=4 plugin.name=ddp" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "bench.json").read_text())
    assert terminal_table(report).splitlines()[-1] == "recommendation: " + report["recommendation"]
    assert markdown(report) == md


def test_under_torchrun_every_rank_measures_and_rank_0_writes(tmp_path):
    out = tmp_path / "out"
    result = rmrun(
        "bench",
        QUICKSTART,
        "--sweep",
        "schedule.batch_size=4",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--pairs",
        "32",
        "--out",
        str(out),
        nproc=2,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("recommendation: fastest that fits: schedule.batch_size=4") == 1  # rank 0 only
    report = json.loads((out / "bench.json").read_text())
    assert report["world_size"] == 2
    ranks = report["combinations"][0]["summary"]["raw"][0]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["records"][0]["pairs"] == 8  # 4 per rank, 2 data-parallel ranks
