"""data.eval_split in whole runs: the eval set carved out of the training file, disjoint by
prompt. A run killed while tokenizing (after its first piece) and resumed is bit-identical to
the uninterrupted one, whose eval set holds the pairs `rmrun check` counted and no prompt of
the pairs it trained on; the model card says where its eval data came from.

The harness is tests/e2e/test_resume.py's (1 process, local state); its 100 training pairs
are split 20 % of the prompts to eval."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rmrun.data.formats import read_pairs
from rmrun.data.split import PromptSplit
from tests.resume_harness import EXIT_OK, ONE_LOCAL, Harness, assert_identical, read_export

SPLIT = ("data.eval=[]", "data.eval_split=0.2", "data.eval_split_seed=1")


def test_a_split_run_killed_while_tokenizing_resumes_bit_identical_and_holds_out_whole_prompts(tmp_path):
    harness = Harness(tmp_path)
    uninterrupted = harness.new_run(ONE_LOCAL, "split")
    first = harness.run(uninterrupted, sets=SPLIT, expect=EXIT_OK)
    killed = harness.new_run(ONE_LOCAL, "split-killed")
    harness.run(killed, sets=SPLIT, faults="kill@tokenize_piece:1", expect="killed")
    resumed = harness.run(killed, sets=SPLIT, expect=EXIT_OK)
    assert "1 kept from an earlier start" in resumed.output, resumed.describe()
    held = list(read_pairs([str(harness.train)], format="colossalchat", split=PromptSplit(1, 0.2, "eval")))
    trained = list(read_pairs([str(harness.train)], format="colossalchat", split=PromptSplit(1, 0.2, "train")))
    assert held and len(held) + len(trained) == 100
    steps = 2 * -(-len(trained) // 8)  # 2 epochs of the pairs left to train on, 8 a step
    assert_identical(read_export(uninterrupted.export), read_export(killed.export), total_steps=steps)
    assert {p.prompt for p in held}.isdisjoint({p.prompt for p in trained})
    final = json.loads((Path(uninterrupted.export) / "eval.json").read_text())["final"]
    assert final["pairs"] == len(held), first.describe()
    counted = re.search(r"tokenize eval: (\d+) pairs \(", first.output)
    assert counted and int(counted.group(1)) == len(held), first.describe()
    card = (Path(uninterrupted.export) / "README.md").read_text()
    assert "evaluation data: 20% of the prompts, held out of the training files (`data.eval_split`)" in card
