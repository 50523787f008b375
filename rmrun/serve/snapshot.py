"""A run's newest committed checkpoint as a model to score with, before (or without) an export.

The model is rebuilt from what the state holds: the result-changing recipe keys the run
stored (``run-identity``: model, data, loss sections, with their paths as the run resolved
them) give the backbone, tokenizer, chat template and truncation rule; the checkpoint's model
file(s) give the weights. A checkpoint's model file is what the Booster saved: the model's
own state dict (safetensors; sharded plugins write an index and shards of the same names;
under LoRA the base layer's keys without peft's ``base_layer.``), loaded back here with
ColossalAI's own key mapping, strictly. Reading writes nothing to the store.
"""

from __future__ import annotations

import json
import posixpath
import sys

from rmrun.store.keys import CHECKPOINT_PREFIX, IDENTITY_KEY


def newest_checkpoint(store):
    """The newest committed, non-quarantined checkpoint (its files are verified as they are read)."""
    for key in reversed(store.committed_keys(CHECKPOINT_PREFIX)):
        state = store.open_unverified(key)
        if state is not None:
            return state
    return None


def stored_recipe(store):
    """The recipe as the run stored it (its result-changing keys; the rest at their defaults),
    or None for a state no run has started in."""
    from rmrun.recipe.loader import recipe_from_keys

    identity = store.open_unverified(IDENTITY_KEY)
    if identity is None:
        return None
    keys = json.loads(identity.read_bytes("identity.json"))["keys"]
    return recipe_from_keys(keys, source=posixpath.join(store.root, "states", IDENTITY_KEY))


def checkpoint_weights(state) -> dict:
    """The model state dict in a committed checkpoint: ``model.safetensors``, or the shards an
    index under ``model/`` names."""
    from safetensors.torch import load

    if "model.safetensors" in state.files:
        return load(state.read_bytes("model.safetensors"))
    indexes = [name for name in state.files if name.startswith("model/") and name.endswith(".safetensors.index.json")]
    if not indexes:
        raise ValueError(f"checkpoint {state.key} has no safetensors model file")
    weight_map = json.loads(state.read_bytes(indexes[0]))["weight_map"]
    weights = {}
    for shard in sorted(set(weight_map.values())):
        weights.update(load(state.read_bytes(posixpath.join("model", shard))))
    return weights


def load_weights(net, weights: dict) -> None:
    """Strictly, the way the Booster saved them (LoRA layers under their base names)."""
    from peft import PeftModel

    if isinstance(net, PeftModel):
        from colossalai.interface.model import PeftUnwrapMixin

        PeftUnwrapMixin(net).load_state_dict(weights, strict=True)
    else:
        net.load_state_dict(weights, strict=True)


def open_newest_checkpoint(url: str, *, device=None):
    """An :class:`~rmrun.serve.exported.Export` scoring with the newest checkpoint of the state at ``url``;
    None when ``url`` is not a state with a committed checkpoint."""
    from rmrun.store import StateStore, StoreError

    try:
        store = StateStore(url)
        state = newest_checkpoint(store)
    except (StoreError, OSError, ValueError):
        return None
    if state is None:
        return None
    return open_checkpoint(store, state, device=device)


def open_checkpoint(store, state, *, device=None):
    """An :class:`~rmrun.serve.exported.Export` scoring with the committed checkpoint ``state`` of ``store``."""
    import torch

    from rmrun.model.model import ModelError, build_reward_model, load_tokenizer, model_family
    from rmrun.recipe import RecipeError
    from rmrun.serve.exported import Export, ScoreError, contract_for
    from rmrun.store import StoreError

    try:
        recipe = stored_recipe(store)
    except RecipeError as e:
        raise ScoreError(f"{store.root}: the stored recipe does not decode: {e.problems[0]}") from None
    if recipe is None:
        raise ScoreError(f"{store.root}: checkpoints but no {IDENTITY_KEY}; not a state rmrun wrote")
    step = state.manifest["meta"]["step"]
    print(f"{store.root} has no export yet: scoring its newest checkpoint ({state.key}, step {step})", file=sys.stderr)
    try:
        tokenizer = load_tokenizer(recipe.model)
        net = build_reward_model(recipe.model, tokenizer=tokenizer, seed=recipe.run.seed)
        family = model_family(recipe.model)
    except ModelError as e:
        raise ScoreError(str(e)) from None
    try:
        load_weights(net, checkpoint_weights(state))
    except (ValueError, RuntimeError, KeyError, StoreError) as e:
        raise ScoreError(f"{store.root}: checkpoint {state.key} does not load: {str(e).splitlines()[0]}") from None
    device = device or torch.device("cpu")
    net.to(device).eval()
    contract = contract_for(data=recipe.data, loss=recipe.loss, family=family, reward_stats=None)
    contract["checkpoint"] = {"key": state.key, "step": step}
    return Export(directory=store.root, contract=contract, tokenizer=tokenizer, net=net, device=device)
