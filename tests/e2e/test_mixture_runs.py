"""A weighted mixture of sources (``[[data.sources]]``) in whole runs.

The harness is tests/e2e/test_resume.py's: its 100 training pairs cut in two sources, "big"
(the first 60 rows, weight 3) and "small" (the last 40, weight 1), and an epoch of
``data.epoch_pairs = 100``: each epoch draws 75 pairs of "big" (all 60, then 15 again) and 25
of "small" (a sample), 13 optimizer steps of 8 pairs, 26 in all. "small" has its own eval file.

* Killed mid-epoch and resumed, the run is bit-identical to the uninterrupted one (weights,
  metrics.jsonl, eval.json); with the data position not restored (the negative control) it is not.
* Killed while tokenizing its sources, then stopped by SIGTERM mid-epoch (exit 75), the same
  command finishes bit-identical too.
* On 2 processes, then 1, then 2 again, every epoch trains on exactly the pairs
  :class:`rmrun.train.sampler.Mixture` draws for it, each as often as drawn: the sources 3:1.
* The plan, ``rmrun check`` and eval.json hold the per-source counts and accuracy.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from rmrun.train.sampler import Mixture
from tests.helpers import rmrun
from tests.resume_harness import (
    EXIT_OK,
    EXIT_PREEMPTED,
    ONE_LOCAL,
    TWO_LOCAL,
    Harness,
    assert_identical,
    committed_checkpoints,
    differing_tensors,
    merge_traces,
    read_export,
    read_trace,
)

pytestmark = pytest.mark.slow

BIG, SMALL, SEED = 60, 40, 7


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("mixture"))
    rows = harness.train.read_text().splitlines(keepends=True)
    assert len(rows) == BIG + SMALL
    data = harness.workdir / "sources"
    data.mkdir()
    (data / "big.jsonl").write_text("".join(rows[:BIG]))
    (data / "small.jsonl").write_text("".join(rows[BIG:]))
    sources = (
        f'[{{name = "big", files = ["{data / "big.jsonl"}"], weight = 3}}, '
        f'{{name = "small", files = ["{data / "small.jsonl"}"], weight = 1, eval = ["{harness.eval}"]}}]'
    )
    sets = ("data.train=[]", "data.eval=[]", f"data.sources={sources}", "data.epoch_pairs=100", f"run.seed={SEED}")
    reference = harness.new_run(ONE_LOCAL, "reference")
    result = harness.run(reference, sets=sets, expect=EXIT_OK)
    return harness, sets, reference, result


def test_the_plan_and_the_eval_hold_each_source(lab):
    harness, sets, reference, result = lab
    plan = json.loads(Path(reference.export, "plan.json").read_text())
    assert plan["epoch_pairs"] == 100 and plan["steps_per_epoch"] == 13 and plan["total_steps"] == 26
    assert plan["sources"] == [
        {"name": "big", "weight": 3.0, "pairs": BIG, "per_epoch": 75},
        {"name": "small", "weight": 1.0, "pairs": SMALL, "per_epoch": 25},
    ]
    final = json.loads(Path(reference.export, "eval.json").read_text())["final"]
    assert final["sources"] == {"small": {"pairs": final["pairs"], "accuracy": final["accuracy"]}}
    assert "by source: small" in result.output
    card = Path(reference.export, "README.md").read_text()
    assert "a mixture of 2 sources" in card and "big (`big.jsonl`, weight 3 = 75% of each epoch" in card
    page = harness.workdir / "report"
    done = rmrun("report", reference.state, "--out", str(page))
    assert done.returncode == 0, done.stderr
    text = (page / "index.html").read_text()
    assert "100 pairs per epoch; big: 60 pairs, weight 3, 75 per epoch (1.25x); small: 40 pairs" in text
    assert "source small" in text


def test_a_mixture_killed_mid_epoch_resumes_bit_identical_and_the_control_differs(lab):
    harness, sets, reference, _ = lab
    killed = harness.new_run(ONE_LOCAL, "killed")
    harness.run(killed, sets=sets, faults="kill@step:6", expect="killed")
    assert committed_checkpoints(killed) == [4]
    control = harness.copy_run(killed, "control")
    result = harness.run(killed, sets=sets, expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert_identical(read_export(reference.export), read_export(killed.export))
    harness.run(control, sets=sets, faults="no-restore=position", expect=EXIT_OK)
    assert differing_tensors(read_export(reference.export), read_export(control.export)), (
        "with the data position not restored the weights are still bit-identical: the test cannot see a resume"
    )


def test_a_world_size_change_trains_on_the_draw_of_each_epoch(lab):
    harness, sets, _, _ = lab
    run = harness.new_run(TWO_LOCAL, "world-size")
    traces = harness.workdir / "traces"
    traces.mkdir()
    prefixes = [str(traces / f"run{i}") for i in range(3)]
    harness.run(run, sets=sets, faults="kill@step:6:all", trace=prefixes[0], expect="killed")
    result = harness.run(run, sets=sets, nproc=1, faults="kill@step:10", trace=prefixes[1], expect="killed")
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    result = harness.run(run, sets=sets, trace=prefixes[2], expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000008", 8), result.describe()

    merged = merge_traces([read_trace(p) for p in prefixes])
    per_epoch: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for step in sorted(merged):
        per_epoch[merged[step]["epoch"]].update(merged[step]["pairs"])
    source_ids = np.array([0] * BIG + [1] * SMALL, dtype=np.int32)  # the sources' pairs in recipe order
    mixture = Mixture(weights=(3.0, 1.0), epoch_pairs=100)
    assert sorted(per_epoch) == [0, 1]
    for epoch, counts in per_epoch.items():
        drawn = collections.Counter(mixture.draw(seed=SEED, epoch=epoch, source_ids=source_ids).tolist())
        assert counts == drawn, f"epoch {epoch}: the pairs trained on are not the epoch's draw"
        big = sum(n for pair, n in counts.items() if pair < BIG)
        assert (big, sum(counts.values()) - big) == (75, 25)  # 3:1
        assert set(range(BIG)) <= set(counts)  # the source below its share: every pair, some twice
        assert max(n for pair, n in counts.items() if pair >= BIG) == 1  # the one above it: a sample
    assert per_epoch[0] != per_epoch[1], "every epoch draws anew"


def test_a_mixture_killed_while_tokenizing_then_stopped_by_sigterm_finishes_bit_identical(lab):
    harness, sets, reference, _ = lab
    run = harness.new_run(ONE_LOCAL, "tokenize-term")
    harness.run(run, sets=sets, faults="kill@tokenize_piece:1", expect="killed")
    result = harness.run(run, sets=sets, faults="term@step:9", expect=EXIT_PREEMPTED)
    assert "kept from an earlier start" in result.output, result.describe()
    result = harness.run(run, sets=sets, expect=EXIT_OK)
    assert result.resumed_from()[1] >= 9, result.describe()
    assert_identical(read_export(reference.export), read_export(run.export))
