"""DDP's find_unused_parameters, decided from the model: off where every trainable parameter
reaches the reward (the shipped backbones, full and LoRA), on for a mixture of experts and for
a built model with a part the reward never uses."""

from __future__ import annotations

import json

import pytest
import torch

from rmrun.model.model import build_reward_model, load_tokenizer, unreached_parameters
from rmrun.recipe import load_recipe, make_plan
from rmrun.recipe.plan import ALL_REACH_REWARD
from tests.helpers import QUICKSTART


def _plan(*overrides: str):
    return make_plan(load_recipe(QUICKSTART, overrides=list(overrides)), world_size=1, num_pairs=64)


def test_quickstart_plans_find_unused_off():
    plan = _plan()
    assert plan.plugin_args["find_unused_parameters"] is False
    assert plan.find_unused_reason == ALL_REACH_REWARD


def test_a_mixture_of_experts_plans_find_unused_on(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    plan = _plan(f"model.pretrain={tmp_path}", "model.init=random")
    assert plan.plugin_args["find_unused_parameters"] is True
    assert plan.find_unused_reason.startswith("a mixtral model routes each token to some experts")


def test_other_plugins_have_no_find_unused():
    plan = _plan("plugin.name=zero2", "plugin.mixed_precision=bf16")
    assert "find_unused_parameters" not in plan.plugin_args and plan.find_unused_reason == ""


def test_a_plan_revised_for_unused_parameters_names_them():
    plan = _plan().with_unused_parameters(["a.weight", "a.bias", "b.weight", "c.weight"])
    assert plan.plugin_args == {"find_unused_parameters": True, "broadcast_buffers": False}
    assert plan.find_unused_reason == (
        "4 trainable parameter(s) get no gradient from the reward: a.weight, a.bias, b.weight and 1 more"
    )


def _built(*overrides: str):
    model = load_recipe(QUICKSTART, overrides=list(overrides)).model
    return build_reward_model(model, tokenizer=load_tokenizer(model), seed=0)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_reward_reaches_every_trainable_parameter_of_a_decoder(lora):
    net = _built(*(["model.lora.r=4"] if lora else []))
    assert unreached_parameters(net) == []


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_reward_reaches_every_trainable_parameter_of_an_encoder(tiny_bert, lora):
    # BERT's reward comes through its pooler, so the pooler trains too.
    extra = ["model.lora.r=4", 'model.lora.target_modules=["query","value"]'] if lora else []
    net = _built(f"model.pretrain={tiny_bert}", f"model.tokenizer={tiny_bert}", *extra)
    assert any("bert.pooler." in name for name, _ in net.named_parameters())
    assert unreached_parameters(net) == []


def test_a_part_the_reward_never_uses_is_found_and_the_random_streams_are_kept():
    # As tests.helpers.llama_with_unused_part builds it, without loading its model code here: a
    # model class loaded from a folder's code stays registered for its config class in the process.
    net = _built()
    net.model.spare = torch.nn.Linear(4, 4)
    state = torch.get_rng_state()
    assert unreached_parameters(net) == ["model.spare.weight", "model.spare.bias"]
    assert torch.equal(torch.get_rng_state(), state)
