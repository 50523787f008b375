"""Weighted mixtures of sources (``[[data.sources]]``): the quotas and draw of an epoch, the
recipe's checks, reading the sources, their identity and the per-source accuracy."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rmrun.data import read_sources
from rmrun.recipe import RecipeError, load_recipe
from rmrun.recipe.data_section import source_quotas, train_sources
from rmrun.run.fingerprint import changed_keys, run_identity, tokenize_key
from rmrun.train.groups import group_metrics
from rmrun.train.sampler import Mixture, epoch_order, mixture_order

PAIR = {"prompt": "p{}", "chosen": "good {}", "rejected": "bad {}"}


def _rows(path, n: int, tag: str) -> str:
    rows = [{k: v.format(f"{tag}{i}") for k, v in PAIR.items()} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _recipe(tmp_path, sources: str, data: str = "", *, name: str = "r.toml") -> str:
    text = f'[data]\nformat = "pairwise"\n{data}\n{sources}\n[model]\npretrain = "model"\n'
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


TWO = """
[[data.sources]]
name = "a"
files = ["a.jsonl"]
weight = 3

[[data.sources]]
name = "b"
files = ["b.jsonl"]
"""

# ----------------------------------------------------------------- quotas and the draw


def test_quotas_follow_the_weights_and_sum_to_the_epoch():
    assert source_quotas([3, 1], 1000) == [750, 250]
    assert source_quotas([1, 1, 1], 10) == [4, 3, 3]  # the leftover pair to the earlier source
    assert source_quotas([0.2, 0.5, 0.3], 7) == [1, 4, 2]  # exact 1.4, 3.5, 2.1: remainders .4 .5 .1
    assert source_quotas([1, 0], 5) == [5, 0]
    for weights, n in (([3, 1], 101), ([1, 2, 3, 4], 997), ([0.01, 1], 50)):
        assert sum(source_quotas(weights, n)) == n


def test_a_3_to_1_mixture_draws_its_sources_within_1_percent_of_3_to_1_every_epoch():
    source_ids = np.repeat(np.array([0, 1], dtype=np.int32), [700, 3000])  # one up-, one down-sampled
    mixture = Mixture(weights=(3.0, 1.0), epoch_pairs=4000)
    for epoch in range(3):
        drawn = mixture.draw(seed=5, epoch=epoch, source_ids=source_ids)
        counts = np.bincount(source_ids[drawn], minlength=2)
        assert len(drawn) == 4000 and abs(counts[0] / counts[1] - 3) / 3 < 0.01
        small = collections.Counter(drawn[drawn < 700].tolist())
        assert set(small) == set(range(700)) and set(small.values()) <= {4, 5}  # 3000 / 700: each 4 or 5 times
        large = drawn[drawn >= 700]
        assert len(set(large.tolist())) == len(large) == 1000  # a sample without repeats
    # the negative control: other weights give other counts
    other = Mixture(weights=(1.0, 1.0), epoch_pairs=4000).draw(seed=5, epoch=0, source_ids=source_ids)
    assert np.bincount(source_ids[other]).tolist() == [2000, 2000]


def test_the_draw_is_a_pure_function_of_seed_and_epoch():
    source_ids = np.repeat(np.array([0, 1], dtype=np.int32), [50, 30])
    mixture = Mixture(weights=(1.0, 2.0), epoch_pairs=60)
    first = mixture.draw(seed=1, epoch=0, source_ids=source_ids)
    assert np.array_equal(first, mixture.draw(seed=1, epoch=0, source_ids=source_ids))
    assert not np.array_equal(first, mixture.draw(seed=1, epoch=1, source_ids=source_ids))
    assert not np.array_equal(first, mixture.draw(seed=2, epoch=0, source_ids=source_ids))


def test_the_mixture_order_is_the_epoch_order_of_the_drawn_pairs():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=90)
    source_ids = np.repeat(np.array([0, 1, 2], dtype=np.int32), 30)
    mixture = Mixture(weights=(1.0, 1.0, 2.0), epoch_pairs=120)
    args = {"seed": 3, "epoch": 1, "batch_size": 4, "group_by_length": True}
    order = mixture_order(lengths=lengths, mixture=mixture, source_ids=source_ids, **args)
    drawn = mixture.draw(seed=3, epoch=1, source_ids=source_ids)
    assert collections.Counter(order.tolist()) == collections.Counter(drawn.tolist())
    assert np.array_equal(order, drawn[epoch_order(lengths=lengths[drawn], **args)])
    without = mixture_order(lengths=lengths, mixture=None, **args)
    assert np.array_equal(without, epoch_order(lengths=lengths, **args))


def test_a_source_without_pairs_cannot_be_drawn_from():
    with pytest.raises(ValueError, match="source 1 has no pairs"):
        Mixture(weights=(1.0, 1.0), epoch_pairs=10).draw(seed=0, epoch=0, source_ids=np.zeros(5, dtype=np.int32))
    # weight 0: nothing to draw, nothing needed
    drawn = Mixture(weights=(1.0, 0.0), epoch_pairs=10).draw(seed=0, epoch=0, source_ids=np.zeros(5, dtype=np.int32))
    assert len(drawn) == 10


# ----------------------------------------------------------------- recipes


def test_a_mixture_recipe_resolves_each_source_against_the_recipe_file(tmp_path):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "parts").mkdir()
    _rows(sub / "parts" / "a1.jsonl", 2, "a")
    _rows(sub / "parts" / "a2.jsonl", 2, "a")
    _rows(sub / "b.jsonl", 2, "b")
    path = _recipe(sub, TWO.replace('"a.jsonl"', '"parts/*.jsonl"'), 'eval = ["b.jsonl"]\n'.replace("b.", "e."))
    _rows(sub / "e.jsonl", 2, "e")
    recipe = load_recipe(path)
    a, b = recipe.data.sources
    assert a.files == (str(sub / "parts" / "a1.jsonl"), str(sub / "parts" / "a2.jsonl")) and a.weight == 3.0
    assert b.files == (str(sub / "b.jsonl"),) and b.format is None and recipe.data.train == ()
    assert [(s.id, s.name, s.format) for s in train_sources(recipe.data)] == [
        (0, "a", "pairwise"),
        (1, "b", "pairwise"),
    ]


@pytest.mark.parametrize(
    ("sources", "data", "message"),
    [
        (TWO, 'train = ["a.jsonl"]', "[data].sources: a mixture names its training files itself; leave data.train out"),
        (TWO.replace('name = "b"', 'name = "a"'), "", "[data].sources[1].name: 'a' is the name of data.sources[0] too"),
        (TWO.replace("weight = 3", "weight = -1"), "", "[data].sources[0].weight: a share of the epoch, 0 or more"),
        (TWO.replace("weight = 3", "weight = 0") + "weight = 0\n", "", "[data].sources: every weight is 0"),
        (TWO.replace('name = "b"', 'name = " "'), "", "[data].sources[1].name: a source needs a name"),
        (TWO, "epoch_pairs = 0", "[data].epoch_pairs: the pairs of an epoch, at least 1; got 0"),
        ("", 'train = ["a.jsonl"]\nepoch_pairs = 10', "[data].epoch_pairs: sets the size of a mixture's epoch"),
        (TWO.replace('files = ["b.jsonl"]', 'files = ["b.jsonl"]\neval = ["a.jsonl"]'), "", "is also a training file"),
        (TWO.replace('name = "b"', 'name = "b"\nwieght = 2'), "", "[data.sources[1]].wieght: unknown key"),
        (TWO.replace('name = "b"', 'name = "b"\nformat = "csv"'), "", "[data.sources[1]].format: 'csv' is not one of"),
    ],
)
def test_a_bad_mixture_is_one_line_naming_the_source(tmp_path, sources, data, message):
    for name in ("a", "b"):
        _rows(tmp_path / f"{name}.jsonl", 2, name)
    with pytest.raises(RecipeError) as info:
        load_recipe(_recipe(tmp_path, sources, data))
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_the_sources_are_read_in_turn_each_in_its_format_with_its_id_and_rows_numbered_across(tmp_path):
    _rows(tmp_path / "a.jsonl", 3, "a")
    hh = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh * 2))
    recipe = load_recipe(_recipe(tmp_path, TWO.replace('files = ["b.jsonl"]', 'files = ["b.jsonl"]\nformat = "hh"')))
    pairs = list(read_sources(train_sources(recipe.data)))
    assert [(p.source_id, p.group) for p in pairs] == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4)]
    assert pairs[3].rejected[0].content == "go"


# ----------------------------------------------------------------- identity


def test_the_weights_change_the_run_but_not_its_tokenized_data_and_a_moved_source_is_the_same_run(tmp_path):
    for name in ("a", "b"):
        _rows(tmp_path / f"{name}.jsonl", 2, name)
    base = load_recipe(_recipe(tmp_path, TWO))
    heavier = load_recipe(_recipe(tmp_path, TWO.replace("weight = 3", "weight = 5"), name="h.toml"))
    assert [k for k in changed_keys(run_identity(base), run_identity(heavier)) if "weight" in k]
    assert tokenize_key(base.data, base.model) == tokenize_key(heavier.data, heavier.model)
    stored, stored_key = run_identity(base), tokenize_key(base.data, base.model)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("a", "b"):
        os.rename(tmp_path / f"{name}.jsonl", moved / f"{name}.jsonl")
    elsewhere = load_recipe(_recipe(moved, TWO))
    assert changed_keys(stored, run_identity(elsewhere)) == []
    assert stored["fingerprint"] == run_identity(elsewhere)["fingerprint"]
    (moved / "b.jsonl").write_text((moved / "b.jsonl").read_text().replace("good", "fine"))
    edited = load_recipe(_recipe(moved, TWO))
    assert changed_keys(stored, run_identity(edited)) == [
        f"data.sources.files: {moved / 'b.jsonl'}: its content differs from the file the stored run read"
    ]
    assert stored_key != tokenize_key(edited.data, edited.model)


def test_a_recipe_without_sources_keeps_its_identity_keys():
    from rmrun.recipe.schema import Recipe
    from rmrun.run.fingerprint import result_keys

    keys = result_keys(Recipe())
    assert "data.sources" not in keys and "data.epoch_pairs" not in keys


# ----------------------------------------------------------------- per-source accuracy


def test_accuracy_per_source_by_hand():
    data = SimpleNamespace(
        group=np.full(6, -1, dtype=np.int64),
        subset_id=np.zeros(6, dtype=np.int32),
        source_id=np.array([0, 0, 0, 1, 1, -1], dtype=np.int32),
        stats={"sources": {"0": "web", "1": "code"}},
    )
    correct = np.array([True, False, True, True, True, False])
    assert group_metrics(correct, data) == {
        "sources": {"web": {"pairs": 3, "accuracy": 2 / 3}, "code": {"pairs": 2, "accuracy": 1.0}}
    }
    data.stats = {}
    assert group_metrics(correct, data) == {}  # without a mixture: no table


def test_read_pairs_takes_the_margins_from_its_rule_unless_told(tmp_path):
    from rmrun.data import read_pairs
    from rmrun.data.rated import PairRule

    row = {"prompt": "p", "responses": [{"text": "a", "score": 3}, {"text": "b", "score": 1}]}
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    url = [str(tmp_path / "r.jsonl")]
    rule = PairRule(margins="scores")
    assert [p.margin for p in read_pairs(url, format="rated", rule=rule)] == [2.0]
    assert [p.margin for p in read_pairs(url, format="rated", rule=rule, margins="none")] == [0.0]  # told


def test_an_eval_split_of_a_mixture_carves_every_source_and_keeps_each_pair_s_source(tmp_path):
    from rmrun.data.split import PromptSplit
    from rmrun.run.counts import count_pairs, split_sources

    _rows(tmp_path / "a.jsonl", 40, "a")
    _rows(tmp_path / "b.jsonl", 30, "b")
    _rows(tmp_path / "c.jsonl", 5, "c")
    recipe = load_recipe(_recipe(tmp_path, TWO, "eval_split = 0.3\neval_split_seed = 4"))
    (train, sources, kept), (held, same, out) = split_sources(recipe.data)
    assert (train, held) == ("train", "eval") and sources == same == train_sources(recipe.data)
    counts = [count_pairs(sources, data=recipe.data, split=side) for side in (kept, out)]
    assert [a + b for a, b in zip(counts[0]["by_source"], counts[1]["by_source"])] == [40, 30]
    assert all(n > 0 for c in counts for n in c["by_source"])  # both sides hold pairs of both sources
    evaluated = list(read_sources(sources, split=PromptSplit(seed=4, threshold=0.3, side="eval")))
    assert {p.source_id for p in evaluated} == {0, 1} and len(evaluated) == counts[1]["pairs"]
    with pytest.raises(RecipeError, match=r"carves the eval set out of the sources; leave data.sources\[1\].eval out"):
        load_recipe(_recipe(tmp_path, TWO + 'eval = ["c.jsonl"]\n', "eval_split = 0.3", name="bad.toml"))


def test_the_export_contract_keeps_the_pair_rule_of_a_rated_source(tmp_path):
    from rmrun.recipe.schema import LossSection
    from rmrun.serve.exported import contract_for

    for name in ("a", "b"):
        _rows(tmp_path / f"{name}.jsonl", 2, name)
    rated = TWO.replace('files = ["b.jsonl"]', 'files = ["b.jsonl"]\nformat = "rated"')
    recipe = load_recipe(_recipe(tmp_path, rated, 'pair_rule = "all_pairs"'))
    data = contract_for(data=recipe.data, loss=LossSection(), family="decoder", reward_stats=None)["data"]
    assert (data["format"], data["pair_rule"], data["rating"]) == ("pairwise", "all_pairs", "score")
    assert [s["format"] for s in data["sources"]] == ["pairwise", "rated"]
    plain = load_recipe(_recipe(tmp_path, TWO, name="plain.toml"))
    assert (
        "pair_rule"
        not in contract_for(data=plain.data, loss=LossSection(), family="decoder", reward_stats=None)["data"]
    )


def test_rmrun_check_prints_each_source_s_pairs_and_draw(tmp_path, capsys, monkeypatch):
    from rmrun.cli.main import main
    from tests.helpers import REPO

    monkeypatch.chdir(tmp_path)
    _rows(tmp_path / "a.jsonl", 40, "a")
    _rows(tmp_path / "b.jsonl", 100, "b")
    assets = os.path.join(REPO, "recipes", "assets")
    model = f'\n[model]\npretrain = "{assets}/tiny-llama"\ntokenizer = "{assets}/tiny-tokenizer"\ninit = "random"\n'
    path = _recipe(tmp_path, TWO, "epoch_pairs = 80")
    Path(path).write_text(Path(path).read_text().replace('\n[model]\npretrain = "model"\n', model))
    recipe = load_recipe(path)
    from rmrun.recipe.plan import make_plan

    plan = make_plan(recipe, world_size=1, num_pairs=140, source_pairs=[40, 100])
    assert (plan.epoch_pairs, plan.steps_per_epoch) == (80, 10)  # 80 pairs at 8 a step
    assert plan.mixture_text() == (
        "80 pairs per epoch; a: 40 pairs, weight 3, 60 per epoch (1.50x); b: 100 pairs, weight 1, 20 per epoch (0.20x)"
    )
    assert make_plan(recipe, world_size=1, num_pairs=140).sources[0]["pairs"] == -1  # not counted yet
    assert main(["check", path]) == 0
    out = capsys.readouterr().out
    assert f"mixture: {plan.mixture_text()}" in out and "optimizer steps: 10 per epoch, 10 in all" in out
