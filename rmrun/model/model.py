"""The reward model: a Hugging Face ``AutoModelForSequenceClassification`` with one
label, so that its export is a plain ``save_pretrained`` directory that transformers,
TRL and vLLM load as they are.

The classification head is what the model's class declares: its children outside the
backbone (``base_model_prefix``) that hold parameters (``score`` for decoders;
``classifier``, ``pooler`` + ``classifier`` or ``head`` + ``classifier`` for encoders).
Its output layer (the linear layer with one output) gets a fresh initialisation; the
whole head trains under LoRA. A decoder's head scores every position and the reward is
read at the last real token; an encoder's head pools (its own way) to one score per
sequence. ``rmrun.recipe.backbone`` says which family a model is.
"""

from __future__ import annotations

import inspect

import torch

from rmrun.recipe.backbone import PAIR_ATTENTION
from rmrun.recipe.schema import LoraSection, ModelSection


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


def _load_config(model: ModelSection):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model.pretrain, num_labels=1, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        hint = "; set [model].trust_remote_code = true to run it" if "trust_remote_code" in str(e) else ""
        raise ModelError(f"{model.pretrain}: cannot load a model config: {str(e).splitlines()[0]}{hint}") from None


def model_family(model: ModelSection) -> str:
    """ "encoder" or "decoder" (``rmrun.recipe.backbone``) for ``model.pretrain``; ModelError for a
    model type rmrun cannot read a reward from."""
    return _family(_load_config(model), model)


def _family(config, model: ModelSection) -> str:
    from rmrun.recipe.backbone import BackboneError, family_of

    try:
        return family_of(config.model_type)
    except BackboneError as e:
        raise ModelError(f"{model.pretrain}: {e}") from None


def head_names(net) -> list[str]:
    """The classification head as the model class declares it: its children outside the
    backbone that hold parameters."""
    backbone = net.base_model_prefix
    return [name for name, child in net.named_children() if name != backbone and any(True for _ in child.parameters())]


def _output_layer(net) -> torch.nn.Linear:
    """The head's output layer: the linear layer with num_labels outputs in its last child."""
    names = head_names(net)
    layers = (
        [
            m
            for m in getattr(net, names[-1]).modules()
            if isinstance(m, torch.nn.Linear) and m.out_features == net.config.num_labels
        ]
        if names
        else []
    )
    if not layers:
        raise ModelError(
            f"{type(net).__name__}: no classification output layer (a linear layer with "
            f"{net.config.num_labels} output) outside the backbone {net.base_model_prefix!r}"
        )
    return layers[-1]


def _init_output_layer(layer: torch.nn.Linear) -> None:
    # ColossalChat's initialisation of a fresh value head.
    torch.nn.init.normal_(layer.weight, std=1.0 / (layer.in_features + 1))
    if layer.bias is not None:
        torch.nn.init.zeros_(layer.bias)


def build_reward_model(
    model: ModelSection,
    *,
    tokenizer,
    grad_checkpoint: bool = False,
    attn_implementation: str | None = None,
    seed: int,
):
    """Backbone from ``model.pretrain`` (or its config alone), its classification head with a
    fresh one-output layer, LoRA adapters if asked (the head stays trainable)."""
    from transformers import AutoModelForSequenceClassification

    config = _load_config(model)
    _family(config, model)  # refuses a backbone without a usable head, in one line
    config.pad_token_id = tokenizer.pad_token_id
    if attn_implementation == PAIR_ATTENTION:
        from rmrun.model.pair_attention import register

        register()
    kwargs: dict[str, str | bool] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    kwargs["trust_remote_code"] = model.trust_remote_code  # explicit: never a "[y/N]" prompt
    # Same weights on every rank, whatever the rank's own random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if model.init == "random":
                net = AutoModelForSequenceClassification.from_config(config, torch_dtype=torch.float32, **kwargs)
            else:
                net = AutoModelForSequenceClassification.from_pretrained(
                    model.pretrain, config=config, torch_dtype=torch.float32, **kwargs
                )
        except (OSError, ValueError) as e:
            raise ModelError(f"{model.pretrain}: cannot load the model: {str(e).splitlines()[0]}") from None
        if len(tokenizer) > net.get_input_embeddings().num_embeddings:
            net.resize_token_embeddings(len(tokenizer))
        _init_output_layer(_output_layer(net))
    # from_pretrained returns eval mode; train with the dropout the config asks for.
    net.train()
    if grad_checkpoint:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if model.lora is not None:
        net = _add_lora(net, model.lora)
    return net


def unreached_parameters(net) -> list[str]:
    """Names of the trainable parameters no gradient of the reward reaches: one forward of a
    few tokens (on the model's own device, its random streams left as they were) and a walk of
    its autograd graph, as DDP's find_unused_parameters does every step."""
    vocab = net.get_input_embeddings().num_embeddings
    device = next(net.parameters()).device
    input_ids = (torch.arange(1, 9, device=device) % vocab).unsqueeze(0)
    with torch.random.fork_rng(devices=[]):
        output = net(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    logits = output.logits if hasattr(output, "logits") else output[0]
    reached, seen, stack = set(), set(), [logits.sum().grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            reached.add(id(node.variable))
        stack.extend(child for child, _ in node.next_functions)
    return [name for name, p in net.named_parameters() if p.requires_grad and id(p) not in reached]


def _add_lora(net, lora: LoraSection):
    from rmrun.model.thirdparty import import_bitsandbytes

    import_bitsandbytes()  # peft imports it to look for quantized layers; rmrun has none
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; it divides by r, so a float is fine
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=head_names(net),
    )
    try:
        return get_peft_model(net, config)
    except ValueError as e:
        raise ModelError(f"[model.lora].target_modules: {str(e).splitlines()[0]}") from None


def classification_model(net):
    """The Hugging Face model inside a (possibly wrapped, possibly LoRA) reward model."""
    from transformers import PreTrainedModel

    for module in net.modules():  # outermost first
        if isinstance(module, PreTrainedModel):
            return module
    raise AssertionError("reward model has no Hugging Face model inside")


def score_module(net) -> torch.nn.Module:
    """The head child that outputs the scores (the last one; a pooler comes before it), inside
    a (possibly wrapped, possibly LoRA, possibly sharded) reward model.

    Under LoRA it is peft's wrapper of the trainable copy, which is what runs."""
    inner = classification_model(net)
    return getattr(inner, head_names(inner)[-1])


class RewardReader:
    """One reward per sequence from the score head's output, captured by a forward hook.

    A decoder's head scores every position: the reward is read at the last real token,
    found from the attention mask, so it never depends on which id padding uses. An
    encoder's head has pooled already.
    """

    def __init__(self, net):
        self._scores = None
        score_module(net).register_forward_hook(self._capture)
        inner = classification_model(net)
        accepted = inspect.signature(inner.forward).parameters
        self._extra = {"use_cache": False} if "use_cache" in accepted else {}
        # sdpa takes a bool block mask as it is; eager attention adds a float one to its scores;
        # the pair attention reads the pairs' layout off the (bool) mask.
        # (Hugging Face's sdpa path on CUDA wants a float mask: it unmasks fully masked rows.)
        attention = getattr(inner.config, "_attn_implementation", None)
        self._sdpa = attention == "sdpa"
        self._pairs = attention == PAIR_ATTENTION

    def _capture(self, module, inputs, output):
        self._scores = output

    def __call__(self, net, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        net(input_ids=input_ids, attention_mask=attention_mask, **self._extra)
        scores, self._scores = self._scores, None
        if scores.dim() == 2:  # pooled by the model's own head
            return scores[:, 0]
        last = attention_mask.sum(dim=-1) - 1
        return scores[torch.arange(scores.shape[0], device=scores.device), last.to(scores.device), 0]

    def shared_prompt(self, net, batch: dict, *, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) rewards of a shared-prompt batch (``rmrun.data.share``): one decoder
        forward with its block mask and position ids, read at each pair's two reward tokens."""
        from rmrun.data.share import additive_mask

        bool_mask = self._pairs or (self._sdpa and torch.device(device).type == "cpu")
        mask = batch["attention_mask"] if bool_mask else additive_mask(batch["attention_mask"], torch.float32)
        mask = mask.to(device)
        if self._pairs:
            from rmrun.model import pair_attention

            if pair_attention.skips_masked_blocks(mask.device):
                mask = pair_attention.attach(mask, batch["pair_layout"].to(device))
        net(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask,
            position_ids=batch["position_ids"].to(device),
            **self._extra,
        )
        scores, self._scores = self._scores, None
        rows = batch["reward_rows"].to(scores.device)
        return (
            scores[rows, batch["chosen_end"].to(scores.device), 0],
            scores[rows, batch["rejected_end"].to(scores.device), 0],
        )


def exportable_tokenizer(tokenizer, net):
    """The tokenizer with ``model_input_names`` cut to what the model's forward accepts, so
    ``model(**tokenizer(texts))`` and ``pipeline(...)`` work on the export."""
    import copy

    accepted = inspect.signature(classification_model(net).forward).parameters
    names = [name for name in tokenizer.model_input_names if name in accepted]
    if names == list(tokenizer.model_input_names):
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names  # what save_pretrained writes
    return tokenizer


def export_reward_model(net, tokenizer, directory: str) -> None:
    """``save_pretrained`` of the model (LoRA merged in) and the tokenizer."""
    from peft import PeftModel

    if isinstance(net, PeftModel):
        net = net.merge_and_unload()
    net.save_pretrained(directory, safe_serialization=True)
    exportable_tokenizer(tokenizer, net).save_pretrained(directory)
