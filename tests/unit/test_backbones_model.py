"""Encoder and decoder backbones without a run: the family table against transformers, the
head found from the model class, ``package:`` model paths, one-line model errors, and the
exported tokenizer's inputs. The encoder is a 2-layer BERT with a WordPiece tokenizer over the
quickstart's words, built from its config (``tiny_bert``, a fixture of tests/conftest.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import REPO, small_recipe

# --------------------------------------------------------------------------- families and check


def test_family_table_matches_transformers():
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    from rmrun.recipe.backbone import DECODER_TYPES, ENCODER_TYPES

    classified = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    assert ENCODER_TYPES == {t for t in classified if t in MODEL_FOR_MASKED_LM_MAPPING_NAMES}
    assert DECODER_TYPES == {t for t in classified if t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES} - ENCODER_TYPES
    for named in ("bert", "roberta", "deberta-v2", "modernbert"):
        assert named in ENCODER_TYPES
    for named in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gpt2", "opt"):
        assert named in DECODER_TYPES


def test_package_names_a_folder_inside_an_installed_package(tmp_path):
    from rmrun.recipe import load_recipe

    recipe = small_recipe(tmp_path, extra='[model]\npretrain = "package:json/tool"\ntokenizer = "package:json"\n')
    loaded = load_recipe(recipe).model
    assert loaded.pretrain == os.path.join(os.path.dirname(json.__file__), "tool")
    assert loaded.tokenizer == os.path.dirname(json.__file__)


def test_head_is_found_from_the_model_class():
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from rmrun.model.model import _output_layer, head_names

    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=1)
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, **small))
    roberta = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, **small))
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=50, **small))
    assert head_names(bert) == ["classifier"]
    assert head_names(roberta) == ["classifier"]
    assert head_names(llama) == ["score"]
    assert _output_layer(roberta) is roberta.classifier.out_proj
    assert _output_layer(llama) is llama.score


def test_model_errors_are_one_line(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from rmrun.model.model import ModelError, build_reward_model, model_family
    from rmrun.recipe.schema import LoraSection, ModelSection

    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(ModelError, match=r't5: model_type "t5" has no sequence-classification head'):
        model_family(ModelSection(pretrain=str(t5)))
    # The default LoRA targets are a decoder's module names; a BERT has none of them.
    section = ModelSection(pretrain=tiny_bert, init="random", lora=LoraSection())
    with pytest.raises(ModelError, match=r"^\[model\.lora\]\.target_modules: Target modules .* not found"):
        build_reward_model(section, tokenizer=AutoTokenizer.from_pretrained(tiny_bert), seed=0)
    assert model_family(ModelSection(pretrain=tiny_bert)) == "encoder"


def test_quickstart_tokenizer_export_drops_inputs_the_model_does_not_take(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rmrun.model.model import export_reward_model

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(REPO, "recipes", "assets", "tiny-tokenizer"))
    assert "token_type_ids" in tokenizer.model_input_names  # what made model(**tokenizer(...)) fail
    net = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    export_reward_model(net, tokenizer, str(tmp_path))
    exported = AutoTokenizer.from_pretrained(str(tmp_path))
    assert exported.model_input_names == ["input_ids", "attention_mask"]
    assert "token_type_ids" in tokenizer.model_input_names  # the run's own tokenizer is left alone
    with torch.no_grad():
        net.eval()(**exported(["hello there", "hi"], return_tensors="pt", padding=True))
