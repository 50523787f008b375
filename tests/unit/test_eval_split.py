"""data.eval_split: an eval set carved out of the training files, disjoint by prompt, seeded.

The draw of a prompt is a pure function of (seed, prompt); the two sides of a split are
complementary and never share a prompt; a fraction keeps about that share of the prompts; a
number of pairs is reached with whole prompts and no more of them than needed; another seed
draws another set (the negative control); the recipe checks and the run identity."""

from __future__ import annotations

import json

import pytest

from rmrun.data.formats import read_pairs
from rmrun.data.pairs import Message, PreferencePair
from rmrun.data.split import PromptSplit, count_threshold, prompt_draw
from rmrun.recipe import RecipeError, load_recipe
from rmrun.run.counts import count_pairs, eval_split_threshold, split_sources
from tests.helpers import TRAIN_DATA, small_recipe


def _pair(prompt: str, i: int) -> PreferencePair:
    return PreferencePair(
        prompt=(Message("user", prompt),) if prompt else (),
        chosen=(Message("assistant", f"good {i}"),),
        rejected=(Message("assistant", f"bad {i}"),),
        source=f"f:{i}",
    )


def _rows(tmp_path, *, prompts: int, per_prompt: int) -> str:
    """A ColossalChat file of ``prompts`` prompts with ``per_prompt`` pairs each, interleaved."""
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as f:
        for k in range(per_prompt):
            for p in range(prompts):
                row = {
                    "context": [{"from": "user", "content": f"question {p}"}],
                    "chosen": [{"from": "assistant", "content": f"answer {p}.{k} right"}],
                    "rejected": [{"from": "assistant", "content": f"answer {p}.{k} wrong"}],
                }
                f.write(json.dumps(row) + "\n")
    return str(path)


def test_a_prompts_draw_depends_on_the_seed_and_the_prompt_alone():
    a, b, other = _pair("what is 2+2?", 1), _pair("what is 2+2?", 2), _pair("what is 3+3?", 1)
    assert prompt_draw(a, seed=0) == prompt_draw(b, seed=0)  # same prompt, other responses
    assert prompt_draw(a, seed=0) != prompt_draw(other, seed=0)
    assert prompt_draw(a, seed=0) != prompt_draw(a, seed=1)
    assert 0 <= prompt_draw(a, seed=7) < 1
    # no prompt: drawn by the responses, so plain-text rows are not one "prompt"
    assert prompt_draw(_pair("", 1), seed=0) != prompt_draw(_pair("", 2), seed=0)


def test_the_two_sides_are_complementary_disjoint_by_prompt_and_in_file_order(tmp_path):
    path = _rows(tmp_path, prompts=200, per_prompt=3)
    every = list(read_pairs([path], format="colossalchat"))
    sides = {
        side: list(read_pairs([path], format="colossalchat", split=PromptSplit(seed=3, threshold=0.25, side=side)))
        for side in ("train", "eval")
    }
    assert len(sides["train"]) + len(sides["eval"]) == len(every) == 600
    assert [p.source for p in sides["eval"]] == [p.source for p in every if p in sides["eval"]]
    prompts = {side: {p.prompt for p in pairs} for side, pairs in sides.items()}
    assert prompts["train"].isdisjoint(prompts["eval"])
    assert len(sides["eval"]) % 3 == 0  # whole prompts: 3 pairs each
    assert 0.15 < len(prompts["eval"]) / 200 < 0.35  # about a quarter of the prompts


def test_a_number_of_pairs_is_reached_with_whole_prompts_and_no_more_than_needed(tmp_path):
    path = _rows(tmp_path, prompts=300, per_prompt=2)
    pairs = list(read_pairs([path], format="colossalchat"))
    for wanted in (1, 2, 3, 101, 599, 600, 10_000):
        threshold = count_threshold(pairs, seed=5, num_pairs=wanted)
        held = [p for p in pairs if PromptSplit(seed=5, threshold=threshold, side="eval").keeps(p)]
        assert len(held) >= min(wanted, 600)
        assert len(held) - min(wanted, 600) < 2, (wanted, len(held))  # at most one prompt's pairs more
        assert len(held) % 2 == 0


def test_another_seed_holds_out_other_prompts(tmp_path):
    path = _rows(tmp_path, prompts=100, per_prompt=1)
    held = {
        seed: {p.prompt for p in read_pairs([path], format="colossalchat", split=PromptSplit(seed, 0.2, "eval"))}
        for seed in (0, 1)
    }
    assert held[0] and held[1] and held[0] != held[1]


def test_a_recipe_with_a_split_counts_each_side_and_draws_the_same_for_a_count(tmp_path):
    recipe = load_recipe(small_recipe(tmp_path, train_pairs=200), overrides=["data.eval_split=0.2", "data.eval=[]"])
    (train, train_urls, train_split), (eval_name, eval_urls, eval_split) = split_sources(recipe.data)
    assert (train, eval_name) == ("train", "eval") and train_urls == eval_urls
    assert [s.urls for s in train_urls] == [recipe.data.train]
    assert train_split.threshold == eval_split.threshold == 0.2
    counts = [count_pairs(train_urls, data=recipe.data, split=s)["pairs"] for s in (train_split, eval_split)]
    assert sum(counts) == 200 and 0 < counts[1] < 80
    by_count = load_recipe(small_recipe(tmp_path, train_pairs=200), overrides=["data.eval_split=50", "data.eval=[]"])
    threshold = eval_split_threshold(by_count.data)
    _, urls, held = split_sources(by_count.data)[1]
    assert held.threshold == threshold and count_pairs(urls, data=by_count.data, split=held)["pairs"] >= 50


def test_recipe_checks_of_the_split(tmp_path):
    recipe = small_recipe(tmp_path)
    with pytest.raises(
        RecipeError, match=r"\[data\]\.eval_split: carves the eval set out of data\.train; leave data\.eval"
    ):
        load_recipe(recipe, overrides=["data.eval_split=0.1"])  # the small recipe has eval files
    for bad in ("0", "-0.5", "1.5", "1.0e-9999"):
        with pytest.raises(RecipeError, match=r"\[data\]\.eval_split: a fraction of the prompts between 0 and 1"):
            load_recipe(recipe, overrides=[f"data.eval_split={bad}", "data.eval=[]"])
    assert load_recipe(recipe, overrides=["data.eval_split=100", "data.eval=[]"]).data.eval_split == 100


def test_the_split_holds_out_pairs_of_the_shipped_data(tmp_path):
    split = PromptSplit(seed=0, threshold=0.1, side="eval")
    held = list(read_pairs([TRAIN_DATA], format="colossalchat", split=split))
    assert 100 < len(held) < 320  # of 2,000
