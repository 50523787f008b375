"""The run identity (rmrun/run/fingerprint.py): which recipe keys change it and which do not, and
the lines ``changed_keys`` gives when a resume is refused."""

from __future__ import annotations

import hashlib
import os
import shutil

import fsspec
import pytest

from rmrun.recipe import load_recipe
from rmrun.recipe.loader import flatten, recipe_to_dict
from rmrun.recipe.results import LATER_KEYS, NON_RESULT_KEYS
from rmrun.run import fingerprint
from rmrun.run.fingerprint import (
    INPUT_KEYS,
    InputDigests,
    changed_keys,
    digest,
    result_keys,
    run_identity,
)
from tests.helpers import EVAL_DATA, QUICKSTART, TRAIN_DATA

# A value for every key that must not change the identity: logging cadence, checkpoint
# cadence and retention, output and state paths, names.
NON_RESULT_VALUES = {
    "run.name": "another-name",
    "run.state": "/tmp/another-state",
    "run.store_retry_seconds": "5",
    "run.preempted_exit_code": "143",
    "run.collective_timeout_minutes": "5",
    "data.tokenize_workers": "3",
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
    "log.trackers": '["wandb", "mlflow"]',
    "log.wandb.project": "another-project",
    "log.wandb.entity": "a-team",
    "log.wandb.name": "another-name",
    "log.wandb.tags": '["a", "b"]',
    "log.wandb.mode": "offline",
    "log.wandb.dir": "/tmp/another-wandb",
    "log.mlflow.tracking_uri": "sqlite:////tmp/another.db",
    "log.mlflow.experiment": "another-experiment",
    "log.mlflow.run_name": "another-name",
    "log.mlflow.tags": '["team=rm"]',
    "model.trust_remote_code": "true",
    "output.dir": "/tmp/another-export",
    "output.reward_stats": "false",
    "output.colossalchat": "true",
}

# Keys that change what a run computes, with the line changed_keys gives for the override.
RESULT_CHANGES = {
    "schedule.lr=2e-5": "schedule.lr: 0.0002 -> 2e-05",
    "schedule.batch_size=8": "schedule.batch_size: 16 -> 8",
    "schedule.max_steps=10": "schedule.max_steps: None -> 10",
    "run.seed=7": "run.seed: 42 -> 7",
    "data.max_length=128": "data.max_length: 256 -> 128",
    "data.group_by_length=false": "data.group_by_length: True -> False",
    "data.share_prompt=off": "data.share_prompt: 'auto' -> 'off'",
    "loss.name=log_exp": "loss.name: 'log_sig' -> 'log_exp'",
    "loss.margin=0.5": "loss.margin: 0.0 -> 0.5",
    "plugin.grad_checkpoint=true": "plugin.grad_checkpoint: False -> True",
    "output.reward_stats_pairs=500": "output.reward_stats_pairs: 10000 -> 500",
    "data.margins=scores": "data.margins: None -> 'scores'",
    "data.margin_scale=2": "data.margin_scale: None -> 2.0",
    "loss.center_coef=0.01": "loss.center_coef: None -> 0.01",
    "data.eval_split_seed=3": "data.eval_split_seed: None -> 3",
}


def identity(*overrides: str) -> dict:
    return run_identity(load_recipe(QUICKSTART, overrides=list(overrides)))


def test_every_key_is_either_a_result_key_or_named_as_not_one():
    recipe = load_recipe(QUICKSTART)
    every = set(flatten(recipe_to_dict(recipe)))
    # keys added later are left out at the values that give what runs before them computed
    assert set(result_keys(recipe)) == every - NON_RESULT_KEYS - set(LATER_KEYS)
    assert NON_RESULT_KEYS <= every, sorted(NON_RESULT_KEYS - every)


def test_the_identity_holds_the_result_keys_the_versions_and_the_inputs_contents():
    ident = identity()
    assert set(ident) == {"keys", "versions", "inputs", "fingerprint"}
    assert ident["keys"]["schedule.lr"] == 0.0002 and "run.name" not in ident["keys"]
    assert set(ident["versions"]) == {"rmrun", "colossalai", "torch", "transformers"}
    # the sources' files are inputs only of a mixture (data.sources), so earlier runs keep their identity
    assert set(ident["inputs"]) == set(INPUT_KEYS) - {"data.sources.files", "data.sources.eval"}
    with open(TRAIN_DATA, "rb") as f:
        assert ident["inputs"]["data.train"] == [hashlib.sha256(f.read()).hexdigest()]
    assert ident["fingerprint"] == identity()["fingerprint"]
    assert changed_keys(ident, identity()) == []


# --------------------------------------------------------------------------- inputs by content


def _copy_data(tmp_path, name: str) -> tuple[str, str]:
    folder = tmp_path / name
    folder.mkdir()
    return str(shutil.copy(TRAIN_DATA, folder / "train.jsonl")), str(shutil.copy(EVAL_DATA, folder / "eval.jsonl"))


def test_the_same_data_at_another_path_is_the_same_run(tmp_path):
    a_train, a_eval = _copy_data(tmp_path, "node1")
    b_train, b_eval = _copy_data(tmp_path, "node2")
    a = identity(f"data.train={a_train}", f"data.eval={a_eval}")
    b = identity(f"data.train={b_train}", f"data.eval={b_eval}")
    assert a["keys"]["data.train"] != b["keys"]["data.train"]  # the paths are kept, for the readers
    assert changed_keys(a, b) == []
    assert a["fingerprint"] == b["fingerprint"]


def test_edited_data_at_the_same_path_is_refused_naming_the_file(tmp_path):
    train, _ = _copy_data(tmp_path, "data")
    before = identity(f"data.train={train}")
    with open(train, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(train, "wb") as f:  # one pair's sides swapped: same size, other content
        f.writelines(lines[1:] + lines[:1])
    after = identity(f"data.train={train}")
    assert changed_keys(before, after) == [
        f"data.train: {train}: its content differs from the file the stored run read"
    ]
    assert before["fingerprint"] != after["fingerprint"]


def test_files_given_in_another_order_are_another_run(tmp_path):
    train, eval_ = _copy_data(tmp_path, "data")
    before = identity(f"data.train=[{train!r}, {eval_!r}]".replace("'", '"'))
    after = identity(f"data.train=[{eval_!r}, {train!r}]".replace("'", '"'))
    assert changed_keys(before, after) == [
        "data.train: the same files in another order (the order of the pairs is part of the run)"
    ]


def test_a_changed_tokenizer_file_is_named(tmp_path):
    tokenizer = str(
        shutil.copytree(os.path.join(os.path.dirname(QUICKSTART), "assets", "tiny-tokenizer"), tmp_path / "tok")
    )
    before = identity(f"model.tokenizer={tokenizer}")
    config = os.path.join(tokenizer, "tokenizer_config.json")
    with open(config, "a") as f:
        f.write("\n")
    after = identity(f"model.tokenizer={tokenizer}")
    assert changed_keys(before, after) == [
        f"model.tokenizer: {tokenizer}: its content differs from what the stored run read"
    ]


def test_an_identity_stored_before_inputs_were_digested_compares_its_paths():
    current = identity()
    stored = {
        "keys": dict(current["keys"], **{"data.train": ["/elsewhere/train.jsonl"]}),
        "versions": current["versions"],
    }
    assert changed_keys(stored, current) == [f"data.train: ['/elsewhere/train.jsonl'] -> [{TRAIN_DATA!r}]"]


def test_a_file_is_read_once_per_version(tmp_path, monkeypatch):
    train, _ = _copy_data(tmp_path, "data")
    reads = []
    real = fingerprint.file_digest
    monkeypatch.setattr(fingerprint, "file_digest", lambda url: reads.append(url) or real(url))
    first = InputDigests()
    sha = first.file(train)
    assert reads == [train]
    again = InputDigests(first.record())  # the cache a later start reads from the state
    assert again.file(train) == sha and reads == [train]
    with open(train, "ab") as f:
        f.write(b"\n")
    assert again.file(train) != sha and reads == [train, train]
    later = InputDigests(again.record())
    assert later.file(train) == again.file(train) and reads == [train, train]
    assert len(later.record()) == 1  # a start keeps the versions it used: the stale one is dropped


def test_a_remote_file_has_the_digest_of_its_content(tmp_path):
    with open(TRAIN_DATA, "rb") as f:
        data = f.read()
    with fsspec.open("memory://rmrun-fingerprint/train.jsonl", "wb") as f:
        f.write(data)
    digests = InputDigests()
    assert digests.file("memory://rmrun-fingerprint/train.jsonl") == hashlib.sha256(data).hexdigest()
    assert digests.path("Qwen/Qwen2-0.5B") == digest({"name": "Qwen/Qwen2-0.5B"})  # a hub id: its name


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


def test_an_eval_split_carved_from_the_training_files_changes_the_identity():
    base, changed = identity("data.eval=[]"), identity("data.eval=[]", "data.eval_split=0.2")
    assert digest(changed) != digest(base)
    assert changed_keys(base, changed) == ["data.eval_split: None -> 0.2"]


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
