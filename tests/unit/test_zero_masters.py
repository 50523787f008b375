"""ZeRO's fp32 master shards survive a checkpoint bit for bit.

ColossalAI's ``load_model`` rebuilds ZeRO's masters from the bf16/fp16 working weights,
dropping their low bits; rmrun saves each rank's masters and puts them back. The real
plugins run on CUDA (tests/e2e/test_gpu.py); the save/restore itself runs here on a stand-in
optimizer that holds the same ``working_to_master_param`` map as ColossalAI's.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from rmrun.model.boost import MASTERS, load_zero_masters, save_zero_masters


class ZeroLike:
    def __init__(self, model):
        # Masters carry bits that the bf16 working weights cannot hold.
        self.working_to_master_param = {
            id(p): p.detach().float() + torch.full(p.shape, 1e-4) for p in model.parameters()
        }


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)).to(torch.bfloat16)


def _masters(model, optimizer):
    return [optimizer.working_to_master_param[id(p)] for p in model.parameters()]


def test_masters_round_trip_bit_for_bit(tmp_path):
    model = _model()
    optimizer = ZeroLike(model)
    saved = [m.clone() for m in _masters(model, optimizer)]
    save_zero_masters(model, optimizer, str(tmp_path))
    for master, param in zip(_masters(model, optimizer), model.parameters()):
        master.copy_(param.detach().float())  # what ColossalAI's load_model leaves behind
    assert not all(torch.equal(a, b) for a, b in zip(saved, _masters(model, optimizer)))
    load_zero_masters(model, optimizer, str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(saved, _masters(model, optimizer)))


def test_masters_of_another_world_size_are_left_alone(tmp_path):
    model = _model()
    optimizer = ZeroLike(model)
    save_zero_masters(model, optimizer, str(tmp_path))
    path = os.path.join(tmp_path, MASTERS, "rank-00000.safetensors")
    save_file(load_file(path), path, metadata={"world_size": "2"})  # shards cut for two ranks
    rebuilt = [m.clone().zero_() for m in _masters(model, optimizer)]
    for master, value in zip(_masters(model, optimizer), rebuilt):
        master.copy_(value)
    load_zero_masters(model, optimizer, str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(rebuilt, _masters(model, optimizer)))


def test_plain_optimizers_save_nothing(tmp_path):
    model = _model()
    save_zero_masters(model, torch.optim.AdamW(model.parameters()), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, MASTERS))
