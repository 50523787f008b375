"""The plugin table: each ``plugin.name`` mapped to a ColossalAI plugin class and its
arguments, as plain data. Nothing here imports ColossalAI, so ``rmrun check`` prints
the exact constructor call; :mod:`rmrun.boost` is the one module that builds it.

The arguments follow ColossalChat's ``train_rm.py`` for each plugin name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rmrun.recipe.schema import PluginSection, ScheduleSection

INITIAL_SCALE = 2**16


@dataclass(frozen=True)
class PluginSpec:
    class_name: str
    arguments: Callable[[PluginSection, ScheduleSection], dict]
    needs_cuda: bool
    supports_lora: bool = True


def _precision(p: PluginSection) -> str:
    return p.mixed_precision


def _ddp(p, s) -> dict:
    # Transformer buffers (rotary tables) are fixed and equal on every rank, so the
    # broadcast DDP does before each forward only costs time.
    return {"find_unused_parameters": True, "broadcast_buffers": False}


def _gemini(placement: str):
    def arguments(p, s) -> dict:
        args = {
            "precision": _precision(p),
            "placement_policy": placement,
            "initial_scale": INITIAL_SCALE,
            "max_norm": s.grad_clip,
            "enable_flash_attention": p.flash_attn,
        }
        if placement == "static":
            args["enable_gradient_accumulation"] = s.accumulation_steps > 1
        return args

    return arguments


def _zero2(cpu_offload: bool):
    def arguments(p, s) -> dict:
        return {
            "stage": 2,
            "precision": _precision(p),
            "initial_scale": INITIAL_SCALE,
            "max_norm": s.grad_clip,
            "cpu_offload": cpu_offload,
        }

    return arguments


def _hybrid(p, s) -> dict:
    return {
        "tp_size": p.tp,
        "pp_size": p.pp,
        "sp_size": p.sp,
        "sequence_parallelism_mode": p.sp_mode if p.sp > 1 else None,
        "zero_stage": p.zero_stage,
        "enable_flash_attention": p.flash_attn,
        "enable_sequence_parallelism": p.sp > 1,
        "cpu_offload": p.zero_cpu_offload,
        "parallel_output": False,
        "max_norm": s.grad_clip,
        "precision": _precision(p),
        "microbatch_size": p.microbatch_size,
        "initial_scale": INITIAL_SCALE,
    }


PLUGINS: dict[str, PluginSpec] = {
    "ddp": PluginSpec("TorchDDPPlugin", _ddp, needs_cuda=False),
    "zero2": PluginSpec("LowLevelZeroPlugin", _zero2(False), needs_cuda=True),
    "zero2_cpu": PluginSpec("LowLevelZeroPlugin", _zero2(True), needs_cuda=True),
    "gemini": PluginSpec("GeminiPlugin", _gemini("static"), needs_cuda=True, supports_lora=False),
    "gemini_auto": PluginSpec("GeminiPlugin", _gemini("auto"), needs_cuda=True, supports_lora=False),
    "3d": PluginSpec("HybridParallelPlugin", _hybrid, needs_cuda=True),
}


def plugin_call(plugin: PluginSection, schedule: ScheduleSection) -> tuple[str, dict]:
    """The class name and keyword arguments the recipe's plugin is built with."""
    spec = PLUGINS[plugin.name]
    return spec.class_name, spec.arguments(plugin, schedule)


def booster_mixed_precision(plugin: PluginSection) -> str | None:
    """Plugins that do not manage precision themselves (ddp) get fp16 from the Booster (torch AMP
    with a dynamic loss scale). ColossalAI 0.5.0's Booster has no bf16 (its BF16MixedPrecision is
    abstract): ddp in bf16 runs its forward under ``torch.autocast`` instead (:func:`autocast_dtype`)."""
    if plugin.name == "ddp" and plugin.mixed_precision == "fp16":
        return "fp16"
    return None


def autocast_dtype(plugin: PluginSection) -> str | None:
    """The dtype rmrun autocasts the forward to itself, where no plugin or Booster does it."""
    if plugin.name == "ddp" and plugin.mixed_precision == "bf16":
        return "bf16"
    return None
