"""How a run's costs outside the training loop grow with N (``benchmarks/scale.py`` says what is
measured): N = 10k, 100k (1 and 2 ranks) and 1M (2 ranks) training pairs. About an hour on 2
cores, so it runs only when asked: ``BENCH_SCALE=1 benchmarks/run.sh -- -k test_scale``
(``BENCH_SCALE_SIZES=10000,100000`` for fewer). The goals are reported, not enforced; the token
arrays of 1 and 2 ranks must be identical. Results: ``<out>/scale-<machine>.{json,md}``."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from benchmarks import machine
from benchmarks.scale import markdown, measure, summarize, write_rows

SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "10000,100000,1000000").split(",")]
OUT = Path(os.environ.get("BENCH_SCALE_OUT", Path(__file__).parent / "results"))


@pytest.mark.skipif(os.environ.get("BENCH_SCALE", "") in ("", "0"), reason="about an hour: set BENCH_SCALE=1")
def test_scale(benchmark, tmp_path):
    points: list[dict] = []

    def run_all():
        for pairs in SIZES:
            data = tmp_path / f"train-{pairs}.jsonl"
            write_rows(data, pairs, seed=1)
            for ranks in (1, 2) if pairs < max(SIZES) or len(SIZES) == 1 else (2,):
                points.append(measure(tmp_path / f"{pairs}-{ranks}", pairs=pairs, ranks=ranks, data=data))
                print(json.dumps(points[-1]), flush=True)
            data.unlink()

    benchmark.pedantic(run_all, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "scale"
    summary = summarize(points)
    if "identical_arrays" in summary:
        assert summary["identical_arrays"], "1 and 2 ranks tokenized different arrays"
    doc = {
        "machine": machine.info(),
        "date": datetime.date.today().isoformat(),
        "points": points,
        "summary": summary,
    }
    benchmark.extra_info.update({"kind": "scale", **doc})
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"scale-{machine.label()}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(doc))
