"""Building the ColossalAI plugin, optimizer and scheduler, and boosting the model.

The one module that imports ``colossalai.booster``; everything that touches the
Booster (backward, no_sync, checkpoint I/O) goes through :class:`Boosted`.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from rmrun.checkpoint import capture_grad_scaler, find_grad_scaler, restore_grad_scaler
from rmrun.recipe.plan import Plan
from rmrun.recipe.schema import PluginSection, ScheduleSection

MIN_LR_RATIO = 0.1
SHARDED = ("zero2", "zero2_cpu", "gemini", "gemini_auto", "3d")


def warmup_cosine(*, warmup_steps: int, total_steps: int, min_ratio: float = MIN_LR_RATIO):
    """Linear warmup, then cosine from the peak down to ``min_ratio`` × peak."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model: torch.nn.Module, *, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (anything one-dimensional)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(model, *, plugin: PluginSection, schedule: ScheduleSection, cuda: bool):
    groups = parameter_groups(model, weight_decay=schedule.weight_decay)
    hyper = {"lr": schedule.lr, "betas": (0.9, 0.95), "eps": 1e-8}
    if cuda:
        from colossalai.nn.optimizer import HybridAdam

        return HybridAdam(groups, adamw_mode=True, **hyper)
    return torch.optim.AdamW(groups, **hyper)


@dataclass
class Boosted:
    booster: Any
    plugin: Any
    model: Any
    optimizer: Any
    scheduler: Any
    sharded: bool
    clips_itself: bool  # the plugin's optimizer clips gradients (max_norm)

    @property
    def dp_group(self):
        return getattr(self.plugin, "dp_group", None)

    def backward(self, loss: torch.Tensor) -> None:
        self.booster.backward(loss, self.optimizer)

    def no_sync(self, active: bool):
        if active and self.plugin.support_no_sync():
            return self.booster.no_sync(self.model, self.optimizer)
        return nullcontext()

    def clip(self, max_norm: float) -> float | None:
        if self.clips_itself or max_norm <= 0:
            return None
        norm = self.optimizer.clip_grad_by_norm(max_norm)
        return float(norm) if norm is not None else None

    def unwrap(self):
        return self.model.unwrap(unwrap_peft=False)

    # checkpoint I/O: local directories; the store moves them
    def save(self, directory: str) -> None:
        import os

        if self.sharded:
            self.booster.save_model(self.model, os.path.join(directory, "model"), shard=True, use_safetensors=True)
            self.booster.save_optimizer(self.optimizer, os.path.join(directory, "optimizer"), shard=True)
        else:
            self.booster.save_model(self.model, os.path.join(directory, "model.safetensors"), use_safetensors=True)
            self.booster.save_optimizer(self.optimizer, os.path.join(directory, "optimizer.pt"))
        self.booster.save_lr_scheduler(self.scheduler, os.path.join(directory, "scheduler.pt"))
        scaler = find_grad_scaler(self.optimizer)
        if scaler is not None:
            with open(os.path.join(directory, "loss_scale.json"), "w") as f:
                json.dump(capture_grad_scaler(scaler), f)

    def load(self, directory: str) -> None:
        import os

        if self.sharded:
            self.booster.load_model(self.model, os.path.join(directory, "model"))
            self.booster.load_optimizer(self.optimizer, os.path.join(directory, "optimizer"))
        else:
            self.booster.load_model(self.model, os.path.join(directory, "model.safetensors"))
            self.booster.load_optimizer(self.optimizer, os.path.join(directory, "optimizer.pt"))
        self.booster.load_lr_scheduler(self.scheduler, os.path.join(directory, "scheduler.pt"))
        scaler = find_grad_scaler(self.optimizer)
        saved = os.path.join(directory, "loss_scale.json")
        if scaler is not None and os.path.exists(saved):
            with open(saved) as f:
                restore_grad_scaler(scaler, json.load(f))


def make_plugin(plan: Plan):
    import colossalai.booster.plugin as plugins

    return getattr(plugins, plan.plugin_class)(**plan.plugin_args)


def boost(model, *, plan: Plan, plugin: PluginSection, schedule: ScheduleSection, cuda: bool) -> Boosted:
    from colossalai.booster import Booster

    colossal_plugin = make_plugin(plan)
    if cuda:
        model = model.cuda()
    optimizer = _optimizer(model, plugin=plugin, schedule=schedule, cuda=cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup_steps=plan.warmup_steps, total_steps=plan.total_steps)
    )
    booster = Booster(plugin=colossal_plugin, mixed_precision=plan.booster_mixed_precision)
    model, optimizer, _, _, scheduler = booster.boost(model, optimizer, lr_scheduler=scheduler)
    return Boosted(
        booster=booster,
        plugin=colossal_plugin,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        sharded=plugin.name in SHARDED,
        clips_itself=plugin.name in SHARDED,
    )
