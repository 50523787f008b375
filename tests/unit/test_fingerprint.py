"""The run identity (rmrun/fingerprint.py): which recipe keys change it and which do not, and
the lines ``changed_keys`` gives when a resume is refused."""

from __future__ import annotations

import pytest

from rmrun.fingerprint import changed_keys, digest, result_keys, run_identity
from rmrun.recipe import load_recipe
from rmrun.recipe.loader import flatten, recipe_to_dict
from rmrun.recipe.schema import NON_RESULT_KEYS
from tests.helpers import QUICKSTART

# A value for every key that must not change the identity: logging cadence, checkpoint
# cadence and retention, output and state paths, names.
NON_RESULT_VALUES = {
    "run.name": "another-name",
    "run.state": "/tmp/another-state",
    "checkpoint.interval_steps": "7",
    "checkpoint.interval_seconds": "60",
    "checkpoint.keep": "5",
    "checkpoint.async_upload": "false",
    "checkpoint.stop_budget_seconds": "30",
    "eval.interval_steps": "9",
    "eval.batch_size": "4",
    "log.interval_steps": "3",
    "log.tensorboard": "true",
    "log.progress": "lines",
    "model.trust_remote_code": "true",
    "output.dir": "/tmp/another-export",
    "output.reward_stats": "false",
    "output.colossalchat": "true",
}

# Keys that change what a run computes, with the line changed_keys gives for the override.
RESULT_CHANGES = {
    "schedule.lr=2e-5": "schedule.lr: 0.0005 -> 2e-05",
    "schedule.batch_size=8": "schedule.batch_size: 16 -> 8",
    "schedule.max_steps=10": "schedule.max_steps: None -> 10",
    "run.seed=7": "run.seed: 42 -> 7",
    "data.max_length=128": "data.max_length: 256 -> 128",
    "data.group_by_length=false": "data.group_by_length: True -> False",
    "data.share_prompt=off": "data.share_prompt: 'auto' -> 'off'",
    "loss.name=log_exp": "loss.name: 'log_sig' -> 'log_exp'",
    "loss.margin=0.5": "loss.margin: 0.0 -> 0.5",
    "plugin.grad_checkpoint=true": "plugin.grad_checkpoint: False -> True",
}


def identity(*overrides: str) -> dict:
    return run_identity(load_recipe(QUICKSTART, overrides=list(overrides)))


def test_every_key_is_either_a_result_key_or_named_as_not_one():
    recipe = load_recipe(QUICKSTART)
    every = set(flatten(recipe_to_dict(recipe)))
    assert set(result_keys(recipe)) == every - NON_RESULT_KEYS
    assert NON_RESULT_KEYS <= every, sorted(NON_RESULT_KEYS - every)


def test_the_identity_holds_the_result_keys_and_the_versions():
    ident = identity()
    assert set(ident) == {"keys", "versions"}
    assert ident["keys"]["schedule.lr"] == 0.0005 and "run.name" not in ident["keys"]
    assert set(ident["versions"]) == {"rmrun", "colossalai", "torch", "transformers"}
    assert digest(ident) == digest(identity())
    assert changed_keys(ident, identity()) == []


def test_the_non_result_values_cover_every_non_result_key():
    assert set(NON_RESULT_VALUES) == NON_RESULT_KEYS


@pytest.mark.parametrize("key", sorted(NON_RESULT_VALUES))
def test_a_key_that_does_not_change_results_keeps_the_identity(key):
    base, changed = identity(), identity(f"{key}={NON_RESULT_VALUES[key]}")
    assert changed == base
    assert digest(changed) == digest(base)


@pytest.mark.parametrize("override", sorted(RESULT_CHANGES))
def test_a_key_that_changes_results_changes_the_identity_and_is_named(override):
    base, changed = identity(), identity(override)
    assert digest(changed) != digest(base)
    assert changed_keys(base, changed) == [RESULT_CHANGES[override]]


def test_lora_turned_on_names_each_of_its_keys():
    lines = changed_keys(identity(), identity("model.lora.r=4"))
    assert "model.lora.r: None -> 4" in lines
    assert {line.split(":")[0] for line in lines} == {
        "model.lora.r",
        "model.lora.alpha",
        "model.lora.dropout",
        "model.lora.target_modules",
    }


def test_changed_keys_lists_keys_then_versions_sorted_with_missing_ones_as_none():
    stored = {"keys": {"b": 1, "a": "x", "gone": 3}, "versions": {"torch": "2.4.0", "rmrun": "0.1.0"}}
    current = {"keys": {"b": 2, "a": "x", "new": [1]}, "versions": {"torch": "2.5.1", "rmrun": "0.1.0"}}
    assert changed_keys(stored, current) == [
        "b: 1 -> 2",
        "gone: 3 -> None",
        "new: None -> [1]",
        "torch: '2.4.0' -> '2.5.1'",
    ]
    assert changed_keys({}, {"versions": {"torch": "2.5.1"}}) == ["torch: None -> '2.5.1'"]


def test_the_digest_ignores_key_order_and_sees_every_value():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1, "b": [1, 2]}) != digest({"a": 1, "b": [2, 1]})
    assert len(digest({})) == 64
