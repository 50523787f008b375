"""recipes/minilm-mixture.toml holds out what it evaluates: no question of an eval file of any
source is asked in a training file of any source (the two data sets draw on the same functions,
so their own eval files would not do: the negative control), and scripts/make_mixture_evals.py
rebuilds the committed eval files byte for byte."""

from __future__ import annotations

import importlib.util
import json
import os

from rmrun.recipe import load_recipe
from rmrun.recipe.data_section import all_files, eval_sources, train_sources
from tests.helpers import REPO

RECIPE = os.path.join(REPO, "recipes", "minilm-mixture.toml")
SCRIPT = os.path.join(REPO, "scripts", "make_mixture_evals.py")


def _prompts(urls) -> set[str]:
    out = set()
    for url in urls:
        with open(url) as f:
            out |= {json.loads(line)["prompt"] for line in f if line.strip()}
    return out


def test_the_mixture_evaluates_no_question_it_trains_on():
    data = load_recipe(RECIPE).data
    trained = _prompts(all_files(train_sources(data)))
    for source in eval_sources(data):
        held = _prompts(source.urls)
        assert held and not held & trained, f"{source.name}: {len(held & trained)} eval questions are trained on"
    # the negative control: the data sets' own eval files share questions with the other's training file
    own = _prompts(
        [os.path.join(REPO, "recipes", "data", n) for n in ("docstrings_eval.jsonl", "rated_docstrings_eval.jsonl")]
    )
    assert own & trained


def test_the_script_rebuilds_the_committed_eval_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_mixture_evals", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    for name in module.EVALS.values():
        with open(os.path.join(REPO, "recipes", "data", name), "rb") as committed:
            assert (tmp_path / name).read_bytes() == committed.read()
