"""The rated-response data of recipes/minilm-rated-docstrings.toml: scripts/make_rated_docstrings.py
rebuilds the committed files byte for byte, and they read under the recipe's own rule as the
script's docstring says (three pairs a question, margins 1 and 2 within one question, no
question or answer on both sides of the split).

The negative controls: another seed builds other files (so the byte comparison can fail), and
best_vs_worst on the same rows makes one pair a question, every one of margin 2 (the margins
that differ within a question come from all_pairs, not from the rows alone). The training runs
themselves take minutes; their numbers are in recipes/README.md and benchmarks/results/.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

RECIPE = os.path.join(REPO, "recipes", "minilm-rated-docstrings.toml")
SCRIPT = os.path.join(REPO, "scripts", "make_rated_docstrings.py")
FILES = ("rated_docstrings_train.jsonl", "rated_docstrings_eval.jsonl")


def _script():
    spec = importlib.util.spec_from_file_location("make_rated_docstrings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _built(out_dir) -> dict[str, bytes]:
    os.makedirs(out_dir)
    done = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(out_dir)], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: (out_dir / name).read_bytes() for name in FILES}


def _committed() -> dict[str, bytes]:
    with open(os.path.join(REPO, "recipes", "data", FILES[0]), "rb") as train:
        with open(os.path.join(REPO, "recipes", "data", FILES[1]), "rb") as evaluation:
            return {FILES[0]: train.read(), FILES[1]: evaluation.read()}


def _pairs(recipe, **change):
    from rmrun.data.formats import read_pairs
    from rmrun.data.rated import PairRule

    data = dataclasses.replace(recipe.data, **change)
    rule = PairRule.of(data)

    def read(urls):
        return list(read_pairs(urls, format=data.format, rule=rule, margins=data.margins))

    return read(data.train), read(data.eval)


def _by_prompt(pairs) -> dict[str, list]:
    out: dict[str, list] = {}
    for pair in pairs:
        out.setdefault(pair.prompt[-1].content, []).append(pair)
    return out


@pytest.fixture(scope="module")
def recipe():
    from rmrun.recipe import load_recipe

    return load_recipe(RECIPE)


def test_the_script_rebuilds_the_committed_files(tmp_path):
    first, second = _built(tmp_path / "first"), _built(tmp_path / "second")
    assert first == second
    if sys.version_info[:2] != _script().BUILT_WITH:
        pytest.skip(f"the files were built with Python {_script().BUILT_WITH}; docstrings differ between versions")
    assert first == _committed()


def test_another_seed_builds_other_files(tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setattr(script, "SEED", script.SEED + 1)
    out = tmp_path / "other"
    out.mkdir()
    script.main(["--out", str(out)])
    other = {name: (out / name).read_bytes() for name in FILES}
    assert all(other[name] != data for name, data in _committed().items())


def test_the_recipes_rule_makes_three_pairs_a_question_with_margins_one_and_two(recipe):
    assert (recipe.data.format, recipe.data.pair_rule, recipe.data.margins) == ("rated", "all_pairs", "scores")
    train, evaluation = _pairs(recipe)
    for pairs, path in ((train, recipe.data.train[0]), (evaluation, recipe.data.eval[0])):
        with open(path) as f:
            rows = sum(1 for _ in f)
        questions = _by_prompt(pairs)
        assert len(questions) == rows and len(pairs) == 3 * rows
        assert all(sorted(p.margin for p in q) == [1, 1, 2] for q in questions.values())
        assert all(len({p.group for p in q}) == 1 for q in questions.values())
    assert 250 <= len(_by_prompt(train)) <= 400 and 150 <= len(_by_prompt(evaluation)) <= 300


def test_no_question_or_answer_is_on_both_sides(recipe):
    train, evaluation = _pairs(recipe)
    assert not set(_by_prompt(train)) & set(_by_prompt(evaluation))

    def answers(pairs):
        return {p.chosen[-1].content for p in pairs} | {p.rejected[-1].content for p in pairs}

    assert not answers(train) & answers(evaluation)


def test_best_vs_worst_on_the_same_rows_gives_one_pair_of_margin_two(recipe):
    train, evaluation = _pairs(recipe, pair_rule="best_vs_worst")
    for pairs in (train, evaluation):
        assert all(len(q) == 1 for q in _by_prompt(pairs).values())
        assert {p.margin for p in pairs} == {2}
    plain, _ = _pairs(recipe, margins="none")
    assert len(plain) == 3 * len(train) and {p.margin for p in plain} == {0}
