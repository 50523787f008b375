"""The throughput benchmarks' smoke: ``benchmarks/run.sh --smoke`` runs one short iteration of
every benchmark and writes the pytest-benchmark JSON, the markdown table and the plot.

Asserts that the files exist and hold the expected rows; never asserts a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_SH = os.path.join(REPO, "benchmarks", "run.sh")
CUDA_PLUGINS = ("zero2", "zero2_cpu", "gemini", "gemini_auto", "3d")


def test_benchmark_smoke_writes_json_markdown_and_plot(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, BENCH_MACHINE="smoke-test", PYTHONWARNINGS="ignore")
    env.pop("BENCH_SMOKE", None)
    done = subprocess.run(
        ["bash", RUN_SH, "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    json_path, md_path, png_path = (tmp_path / f"smoke-test.{ext}" for ext in ("json", "md", "png"))
    for path in (json_path, md_path, png_path):
        assert path.is_file() and path.stat().st_size > 0, path
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads(json_path.read_text())
    meta = doc["rmrun_bench"]
    assert meta["smoke"] is True
    assert {"cpu_model", "cores", "gpu", "torch", "colossalai", "date"} <= set(meta["machine"])
    names = {b["name"] for b in doc["benchmarks"]}
    assert "test_tokenize" in names
    assert "test_startup[tiny]" in names
    for procs in (1, 2):
        for size in ("tiny", "small"):
            name = f"test_train[ddp-{procs}proc-{size}]"
            assert name in names, name
            info = next(b for b in doc["benchmarks"] if b["name"] == name)["extra_info"]
            assert set(info["variants"]) == {"rmrun", "hand", "colossalchat"}
            for key in ("rmrun_vs_hand", "rmrun_vs_colossalchat", "checkpoint"):
                assert key in info, (name, key)
            for variant in info["variants"].values():
                for metric in ("pairs_per_second", "tokens_per_second", "padding_fraction", "peak_rss_mib"):
                    assert metric in variant
    for profile in ("long-tailed", "prompt-heavy"):
        for size in ("tiny", "small"):
            name = f"test_shared_prompt[{profile}-{size}]"
            info = next(b for b in doc["benchmarks"] if b["name"] == name)["extra_info"]
            assert set(info["variants"]) == {"rmrun", "shared", "packed", "hand"} and info["profile"] == profile
            for faster in ("shared", "packed"):
                assert {"paired_median", "paired_median_cpu", "overall"} <= set(info[f"{faster}_vs_standard"])
            for variant in info["variants"].values():
                for metric in (
                    "pairs_per_second",
                    "pairs_per_cpu_second",
                    "tokens_per_second",
                    "padding_fraction",
                    "peak_rss_mib",
                ):
                    assert metric in variant
    skipped = {s["name"]: s["reason"] for s in meta["skipped"]}
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        for plugin in CUDA_PLUGINS:
            for size in ("tiny", "small", "medium"):
                assert skipped.get(f"test_train[{plugin}-1proc-{size}]") == "needs CUDA"

    md = md_path.read_text()
    assert "Intel" in md or meta["machine"]["cpu_model"] in md
    assert f"GPU: {meta['machine']['gpu']}" in md
    for heading in (
        "## Goals",
        "## Throughput per plugin and config",
        "## Shared-prompt forward vs standard",
        "## Checkpoint save / load",
        "## Process start to first optimizer step",
        "## Tokenize",
    ):
        assert heading in md, heading
    for goal in (
        "1. rmrun step / hand-written loop",
        "2. rmrun batching / ColossalChat batching",
        "3. checkpoint overhead",
        "4. resumed / fresh",
        "6. shared-prompt / standard forward",
        "6. shared-prompt + packed / standard forward",
    ):
        assert goal in md, goal
    goal_rows = [line for line in md.splitlines() if line.startswith(("| 1.", "| 2.", "| 3.", "| 4.", "| 5."))]
    assert goal_rows and all("MET" in line or "MISSED" in line for line in goal_rows)
    if not cuda:
        for plugin in CUDA_PLUGINS:
            assert f"| {plugin} | 1 | tiny, small, medium | — | skipped: needs CUDA |" in md
        assert "| ddp | 1 | medium | — | skipped: needs CUDA |" in md  # the GPU-sized model
