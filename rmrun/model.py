"""The reward model: a Hugging Face ``AutoModelForSequenceClassification`` with one
label, so that its export is a plain ``save_pretrained`` directory that transformers,
TRL and vLLM load as they are.
"""

from __future__ import annotations

import torch

from rmrun.recipe.schema import ModelSection


class ModelError(ValueError):
    """A model or tokenizer that cannot be loaded; one line, naming the path."""


PAD_TOKEN = "<pad>"


def load_tokenizer(model: ModelSection):
    """The fast tokenizer, right padding, with a pad token of its own.

    Padding that aliases the end-of-sequence token would hide where the response ends;
    when the tokenizer has no dedicated pad token one is added (and the embeddings grow).
    """
    from transformers import AutoTokenizer

    source = model.tokenizer or model.pretrain
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"{source}: cannot load a tokenizer: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"
    return tokenizer


def _init_score_head(score: torch.nn.Linear, *, hidden_size: int) -> None:
    # ColossalChat's initialisation of a fresh value head.
    torch.nn.init.normal_(score.weight, std=1.0 / (hidden_size + 1))
    if score.bias is not None:
        torch.nn.init.zeros_(score.bias)


def build_reward_model(
    model: ModelSection, *, tokenizer, grad_checkpoint: bool = False, attn_implementation: str | None = None,
    seed: int,
):
    """Backbone from ``model.pretrain`` (or its config alone), a fresh one-output score head,
    LoRA adapters if asked (the head stays trainable)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(model.pretrain, num_labels=1, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        hint = "; set [model].trust_remote_code = true to run it" if "trust_remote_code" in str(e) else ""
        raise ModelError(f"{model.pretrain}: cannot load a model config: {str(e).splitlines()[0]}{hint}") from None
    config.pad_token_id = tokenizer.pad_token_id
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    kwargs["trust_remote_code"] = model.trust_remote_code  # explicit: never a "[y/N]" prompt
    # Same weights on every rank, whatever the rank's own random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model.init == "random":
            net = AutoModelForSequenceClassification.from_config(config, torch_dtype=torch.float32, **kwargs)
        else:
            net = AutoModelForSequenceClassification.from_pretrained(
                model.pretrain, config=config, torch_dtype=torch.float32, **kwargs
            )
        if len(tokenizer) > net.get_input_embeddings().num_embeddings:
            net.resize_token_embeddings(len(tokenizer))
        _init_score_head(net.score, hidden_size=config.hidden_size)
    # from_pretrained returns eval mode; train with the dropout the config asks for.
    net.train()
    if grad_checkpoint:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if model.lora is not None:
        net = _add_lora(net, model)
    return net


def _add_lora(net, model: ModelSection):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = model.lora
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=["score"],
    )
    return get_peft_model(net, config)


def score_module(net) -> torch.nn.Module:
    """The score head inside a (possibly wrapped, possibly LoRA) reward model."""
    candidates = [m for name, m in net.named_modules() if name.split(".")[-1] == "score"]
    if not candidates:
        raise AssertionError("reward model has no score head")
    return candidates[0]


class RewardReader:
    """Reads each sequence's reward at its last real token, found from the attention mask.

    The score head's per-token output is captured by a forward hook, so the reward never
    depends on which id padding uses.
    """

    def __init__(self, net):
        self._scores = None
        score_module(net).register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self._scores = output

    def __call__(self, net, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        net(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        scores, self._scores = self._scores, None
        last = attention_mask.sum(dim=-1) - 1
        return scores[torch.arange(scores.shape[0], device=scores.device), last.to(scores.device), 0]


def export_reward_model(net, tokenizer, directory: str) -> None:
    """``save_pretrained`` of the model (LoRA merged in) and the tokenizer."""
    from peft import PeftModel

    if isinstance(net, PeftModel):
        net = net.merge_and_unload()
    net.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
