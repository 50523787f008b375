"""The dynamic loss scale survives a checkpoint, counters included.

ColossalAI's ZeRO/Gemini optimizers leave their DynamicGradScaler out of the
optimizer state_dict, so rmrun saves it itself; the real plugins run on CUDA only
(tests/e2e/test_gpu.py), the scaler object itself runs here.
"""

from __future__ import annotations

import json
import types

import pytest
import torch

from rmrun.model.boost import capture_grad_scaler, find_grad_scaler, restore_grad_scaler


@pytest.fixture(autouse=True)
def cpu_device(monkeypatch):
    # ColossalAI's CPU accelerator refuses get_current_device(); the scaler only needs a device.
    import colossalai.amp.naive_amp.grad_scaler.base_grad_scaler as base
    import colossalai.amp.naive_amp.grad_scaler.dynamic_grad_scaler as dynamic

    cpu = types.SimpleNamespace(get_current_device=lambda: torch.device("cpu"), device_count=lambda: 0)
    for module in (base, dynamic):
        if hasattr(module, "get_accelerator"):
            monkeypatch.setattr(module, "get_accelerator", lambda: cpu)


def _colossal_scaler():
    from colossalai.amp.naive_amp.grad_scaler import DynamicGradScaler

    return DynamicGradScaler(initial_scale=2**16, growth_interval=3, hysteresis=2, min_scale=1, max_scale=2**24)


def test_colossalai_dynamic_scaler_round_trips_through_json():
    scaler = _colossal_scaler()
    for overflow in (False, False, True, False, True, True, False):
        scaler.update(torch.tensor(overflow))
    saved = json.loads(json.dumps(capture_grad_scaler(scaler)))
    fresh = _colossal_scaler()
    assert fresh.scale.item() != scaler.scale.item() or fresh._growth_step != scaler._growth_step
    restore_grad_scaler(fresh, saved)
    for name, value in vars(scaler).items():
        other = getattr(fresh, name)
        if torch.is_tensor(value):
            assert torch.equal(value, other), name
        elif isinstance(value, (int, float, bool, type(None))):
            assert value == other, name
    # Both continue identically.
    for overflow in (False, True, False, False):
        scaler.update(torch.tensor(overflow))
        fresh.update(torch.tensor(overflow))
        assert scaler.scale.item() == fresh.scale.item()


def test_the_colossalai_optimizer_state_dict_does_not_hold_the_scale():
    # Why rmrun saves the scaler itself: the scaler's own state_dict omits its counters.
    scaler = _colossal_scaler()
    assert "_growth_step" not in scaler.state_dict() and "_hysteresis_step" not in scaler.state_dict()


def test_the_scaler_is_found_where_each_optimizer_keeps_it():
    scaler = _colossal_scaler()
    zero_like = types.SimpleNamespace(mixed_precision_mixin=types.SimpleNamespace(grad_scaler=scaler))
    gemini_like = types.SimpleNamespace(
        optim=types.SimpleNamespace(mix_precision_mixin=types.SimpleNamespace(grad_scaler=scaler))
    )
    assert find_grad_scaler(zero_like) is scaler
    assert find_grad_scaler(gemini_like) is scaler
    assert find_grad_scaler(types.SimpleNamespace()) is None
