"""The plugin table: what rmrun knows about each ``plugin.name``, defined once.

Each entry holds the ColossalAI class and its constructor arguments (those of
ColossalChat's ``train_rm.py``), whether it needs CUDA, whether it shards the model
and optimizer, the precisions it trains in, what it supports (LoRA, gradient
accumulation, tp/pp/sp, the shared-prompt forward), who clips gradients, who casts to
the mixed precision and who turns flash attention on, and its own cross-field checks.
Validation, the plan, the boost step, the shared-prompt check and :mod:`rmrun.model.boost`
read it; nothing here imports ColossalAI, so ``rmrun check`` prints the exact
constructor call without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rmrun.recipe.schema import PluginSection, ScheduleSection

INITIAL_SCALE = 2**16
ALL_PRECISIONS = ("fp32", "bf16", "fp16")

# Who does a piece of the work: the ColossalAI plugin, or rmrun around it.
Owner = Literal["plugin", "rmrun"]
# A plugin's own check: the problems of its section, one line each.
Rule = Callable[[PluginSection], list[str]]


@dataclass(frozen=True)
class PluginSpec:
    class_name: str
    arguments: Callable[[PluginSection, ScheduleSection], dict]
    needs_cuda: bool
    sharded: bool  # model and optimizer saved as per-rank shards, gathered for the export
    precisions: tuple[str, ...]  # the [plugin].mixed_precision values it trains in
    clips_gradients: Owner  # "plugin": its optimizer clips (max_norm); "rmrun": the trainer does
    casts: Owner  # "plugin": it manages mixed precision; "rmrun": the Booster's AMP or rmrun's autocast
    flash_attention: Owner  # "plugin": it turns flash attention on itself; "rmrun": the model is built with it
    model_parallel: bool = False  # takes tp, pp, sp and its own ZeRO stage
    shared_prompt: bool = False  # runs the Hugging Face model as it is (no shardformer), so a block mask reaches it
    supports_lora: bool = True
    supports_accumulation: bool = True
    # takes find_unused_parameters, which the plan sets from the model (rmrun.recipe.plan.find_unused)
    finds_unused_parameters: bool = False
    rules: tuple[Rule, ...] = ()


def _ddp(p, s) -> dict:
    # Transformer buffers (rotary tables) are fixed and equal on every rank, so the
    # broadcast DDP does before each forward only costs time. find_unused_parameters is the
    # plan's to decide, from the model (rmrun.recipe.plan.find_unused); off, DDP skips a walk of
    # the autograd graph every step.
    return {"find_unused_parameters": False, "broadcast_buffers": False}


def _gemini(placement: str):
    def arguments(p, s) -> dict:
        args = {
            "precision": p.mixed_precision,
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
            "precision": p.mixed_precision,
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
        "precision": p.mixed_precision,
        "microbatch_size": p.microbatch_size,
        "initial_scale": INITIAL_SCALE,
    }


def _hybrid_rules(p: PluginSection) -> list[str]:
    """The "3d" plugin's ZeRO stage, pipeline and sequence-parallel combinations."""
    problems = []
    if p.zero_stage not in (0, 1, 2):
        problems.append(f"[plugin].zero_stage: must be 0, 1 or 2, got {p.zero_stage}")
    if p.zero_cpu_offload and p.zero_stage == 0:
        problems.append("[plugin].zero_cpu_offload: offloads ZeRO optimizer state, so it needs zero_stage 1 or 2")
    if p.pp > 1:
        problems.append(
            "[plugin].pp: pipeline parallelism is not supported for reward models (one forward reads "
            "rewards from the whole batch); use tp, sp or zero_stage to spread the model"
        )
    if p.pp > 1 and p.zero_stage > 1:
        problems.append("[plugin].zero_stage: ZeRO-2 cannot be combined with pipeline parallelism (pp > 1)")
    if p.sp > 1 and p.sp_mode in ("split_gather", "ring") and p.tp == 1:
        problems.append(f'[plugin].sp_mode: "{p.sp_mode}" sequence parallelism needs tp > 1')
    if p.zero_stage > 0 and p.mixed_precision == "fp32":
        problems.append('[plugin].mixed_precision: ZeRO inside the "3d" plugin needs "bf16" or "fp16"')
    return problems


PLUGINS: dict[str, PluginSpec] = {
    "ddp": PluginSpec(
        "TorchDDPPlugin",
        _ddp,
        needs_cuda=False,
        sharded=False,
        precisions=ALL_PRECISIONS,
        clips_gradients="rmrun",
        casts="rmrun",
        flash_attention="rmrun",
        shared_prompt=True,
        finds_unused_parameters=True,
    ),
    "zero2": PluginSpec(
        "LowLevelZeroPlugin",
        _zero2(False),
        needs_cuda=True,
        sharded=True,
        precisions=ALL_PRECISIONS,
        clips_gradients="plugin",
        casts="plugin",
        flash_attention="rmrun",
        shared_prompt=True,
    ),
    "zero2_cpu": PluginSpec(
        "LowLevelZeroPlugin",
        _zero2(True),
        needs_cuda=True,
        sharded=True,
        precisions=ALL_PRECISIONS,
        clips_gradients="plugin",
        casts="plugin",
        flash_attention="rmrun",
        shared_prompt=True,
    ),
    "gemini": PluginSpec(
        "GeminiPlugin",
        _gemini("static"),
        needs_cuda=True,
        sharded=True,
        precisions=("bf16", "fp16"),
        clips_gradients="plugin",
        casts="plugin",
        flash_attention="plugin",
        supports_lora=False,
    ),
    "gemini_auto": PluginSpec(
        "GeminiPlugin",
        _gemini("auto"),
        needs_cuda=True,
        sharded=True,
        precisions=("bf16", "fp16"),
        clips_gradients="plugin",
        casts="plugin",
        flash_attention="plugin",
        supports_lora=False,
        supports_accumulation=False,
    ),
    "3d": PluginSpec(
        "HybridParallelPlugin",
        _hybrid,
        needs_cuda=True,
        sharded=True,
        precisions=ALL_PRECISIONS,
        clips_gradients="plugin",
        casts="plugin",
        flash_attention="plugin",
        model_parallel=True,
        rules=(_hybrid_rules,),
    ),
}
CUDA_PLUGINS = tuple(name for name, spec in PLUGINS.items() if spec.needs_cuda)


def plugin_call(plugin: PluginSection, schedule: ScheduleSection) -> tuple[str, dict]:
    """The class name and keyword arguments the recipe's plugin is built with."""
    spec = PLUGINS[plugin.name]
    return spec.class_name, spec.arguments(plugin, schedule)


def booster_mixed_precision(plugin: PluginSection) -> str | None:
    """Plugins that do not manage precision themselves (ddp) get fp16 from the Booster (torch AMP
    with a dynamic loss scale). ColossalAI 0.5.0's Booster has no bf16 (its BF16MixedPrecision is
    abstract): ddp in bf16 runs its forward under ``torch.autocast`` instead (:func:`autocast_dtype`)."""
    if PLUGINS[plugin.name].casts == "rmrun" and plugin.mixed_precision == "fp16":
        return "fp16"
    return None


def autocast_dtype(plugin: PluginSection) -> str | None:
    """The dtype rmrun autocasts the forward to itself, where no plugin or Booster does it."""
    if PLUGINS[plugin.name].casts == "rmrun" and plugin.mixed_precision == "bf16":
        return "bf16"
    return None


def plugin_problems(plugin: PluginSection, schedule: ScheduleSection, *, lora: bool) -> list[str]:
    """The checks that depend on the plugin: what it supports, the sizes only a
    model-parallel plugin takes, its precisions and its own rules."""
    spec = PLUGINS[plugin.name]
    problems = []
    if lora and not spec.supports_lora:
        problems.append(f'[model.lora]: LoRA is not supported with plugin "{plugin.name}"; use zero2, ddp or 3d')
    if schedule.accumulation_steps > 1 and not spec.supports_accumulation:
        alternative = next(
            name
            for name, other in PLUGINS.items()
            if other.class_name == spec.class_name and other.supports_accumulation
        )
        problems.append(
            f'[schedule].accumulation_steps: plugin "{plugin.name}" does not support gradient '
            f'accumulation; use 1 or plugin "{alternative}"'
        )
    if not spec.model_parallel:
        problems += _model_parallel_options_problems(plugin)
    for rule in spec.rules:
        problems += rule(plugin)
    if plugin.mixed_precision not in spec.precisions:
        allowed = " or ".join(f'"{precision}"' for precision in spec.precisions)
        problems.append(
            f'[plugin].mixed_precision: plugin "{plugin.name}" trains in {allowed}, not "{plugin.mixed_precision}"'
        )
    return problems


def _model_parallel_options_problems(p: PluginSection) -> list[str]:
    """tp, pp, sp and the ZeRO options set on a plugin that does not take them."""
    problems = []
    for key in ("tp", "pp", "sp"):
        if getattr(p, key) != 1:
            problems.append(f'[plugin].{key}: only the "3d" plugin shards models; got {key}={getattr(p, key)}')
    if p.zero_stage != 0:
        problems.append('[plugin].zero_stage: only applies to the "3d" plugin (zero2 is its own plugin)')
    if p.zero_cpu_offload:
        problems.append('[plugin].zero_cpu_offload: only applies to the "3d" plugin (zero2_cpu is its own plugin)')
    return problems


# How ``torch.autocast`` runs bf16 matmuls on a CPU, by ``World.cpu_bf16`` (the names
# ``rmrun.runtime.machine.cpu_bf16_kernels`` gives).
CPU_BF16_KERNELS = {
    "amx_bf16": "oneDNN with AMX (amx_bf16)",
    "avx512_bf16": "oneDNN with AVX512-BF16 (avx512_bf16)",
    "avx512": "oneDNN on AVX512 without bf16 matrix units (no amx_bf16 or avx512_bf16): expect no speed-up over fp32",
}


def cuda_problem(plugin: PluginSection, *, cpu_bf16: str | None = None) -> str | None:
    """Why the plugin cannot run on a machine without CUDA, or None. ``cpu_bf16`` names the kernels
    that run bf16 matmuls on this CPU (a key of :data:`CPU_BF16_KERNELS`), None where torch has no
    oneDNN bf16 kernels on it (its reference fallback is ~20x slower than fp32)."""
    if PLUGINS[plugin.name].needs_cuda:
        return f'[plugin].name: "{plugin.name}" needs CUDA GPUs and this machine has none; use name = "ddp" on CPU'
    if plugin.mixed_precision == "fp16":
        return (
            '[plugin].mixed_precision: "fp16" needs CUDA (its dynamic loss scale is torch\'s CUDA AMP); '
            'use "bf16" or "fp32" on CPU'
        )
    if plugin.mixed_precision == "bf16" and cpu_bf16 is None:
        return (
            '[plugin].mixed_precision: "bf16" on this CPU: torch has no oneDNN bf16 kernels without AVX512 '
            '(avx512f/bw/vl/dq in /proc/cpuinfo) and its fallback is ~20x slower than fp32; use "fp32"'
        )
    return None


def cpu_precision_note(plugin: PluginSection, *, cpu_bf16: str | None) -> str | None:
    """What ddp in bf16 runs on a CPU without CUDA, for ``rmrun check`` and the run's log; None otherwise."""
    if autocast_dtype(plugin) is None or cpu_bf16 is None:
        return None
    return f"bf16 autocast on CPU: {CPU_BF16_KERNELS[cpu_bf16]}; weights, gradients and the optimizer in fp32"
