"""Hand-off of an export to other RLHF stacks' own reward-model layouts.

ColossalChat's PPO (``applications/ColossalChat/examples/training_scripts/train_ppo.py``)
builds ``coati.models.RewardModel(rm_pretrain)`` — ``model`` (``AutoModel``, the backbone)
plus ``value_head`` (``nn.Linear(hidden, 1)`` with a bias), the reward read at the last real
token as rmrun reads it — and loads ``--rm_checkpoint_path`` with ``booster.load_model`` when
the path contains "modeling". :func:`write_colossalchat_reward_model` writes that file.
"""

from __future__ import annotations

import json
import os

COLOSSALCHAT_FILE = "colossalchat-modeling.safetensors"


class HandoffError(ValueError):
    """The export cannot be laid out for the other stack (one line, names what is missing)."""


def _export_tensors(directory: str) -> dict:
    from safetensors.torch import load_file

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(os.path.join(directory, shard)))
        return tensors
    return load_file(os.path.join(directory, "model.safetensors"))


def _base_prefix(directory: str) -> str:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    cls = AutoModelForSequenceClassification._model_mapping[type(config)]
    return cls.base_model_prefix


def colossalchat_state_dict(directory: str) -> dict:
    """The export's weights under ColossalChat's RewardModel names: backbone under ``model.``,
    the one-output head as ``value_head.weight`` with a zero ``value_head.bias``."""
    import torch

    tensors = _export_tensors(directory)
    prefix = _base_prefix(directory) + "."
    if "score.weight" not in tensors:
        raise HandoffError(
            f"{directory}: no score.weight: ColossalChat's RewardModel reads a decoder's last token; "
            "this export's head is not a decoder score head"
        )
    head = tensors.pop("score.weight")
    if head.shape[0] != 1:
        raise HandoffError(f"{directory}: the score head has {head.shape[0]} outputs; a reward model has 1")
    out = {}
    for name, tensor in tensors.items():
        if not name.startswith(prefix):
            raise HandoffError(f"{directory}: weight {name} is neither the backbone ({prefix}*) nor the score head")
        out["model." + name[len(prefix) :]] = tensor
    out["value_head.weight"] = head
    out["value_head.bias"] = torch.zeros(1, dtype=head.dtype)
    return out


def write_colossalchat_reward_model(directory: str) -> str:
    from safetensors.torch import save_file

    path = os.path.join(directory, COLOSSALCHAT_FILE)
    save_file(
        {k: v.contiguous() for k, v in colossalchat_state_dict(directory).items()}, path, metadata={"format": "pt"}
    )
    return path
