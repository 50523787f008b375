"""Cross-field checks, in two phases.

``static_problems`` needs only the recipe and runs at load. ``environment_problems``
needs the world the run found (process count, CUDA) and runs right after the
distributed start; it is a pure function of (recipe, world) so tests call it
without launching processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from rmrun.recipe.schema import PluginSection, Recipe

GEMINI_PLUGINS = ("gemini", "gemini_auto")
CUDA_PLUGINS = ("zero2", "zero2_cpu", "gemini", "gemini_auto", "3d")


@dataclass(frozen=True)
class World:
    """What the run found itself on."""

    size: int
    cuda: bool


def model_parallel_size(p: PluginSection) -> int:
    """Ranks one model replica spans. "split_gather" and "ring" sequence parallelism run
    inside the tensor-parallel group (ColossalAI then sets its own sp size to 1)."""
    sp = p.sp if p.sp_mode in ("all_to_all", "ring_attn") else 1
    return p.tp * p.pp * sp


def static_problems(recipe: Recipe) -> list[str]:
    problems = []
    p, s = recipe.plugin, recipe.schedule
    if not recipe.data.train:
        problems.append("[data].train: needs at least one file")
    for key, value, low in (
        ("[data].max_length", recipe.data.max_length, 8),
        ("[schedule].max_epochs", s.max_epochs, 1),
        ("[schedule].batch_size", s.batch_size, 1),
        ("[schedule].accumulation_steps", s.accumulation_steps, 1),
        ("[plugin].tp", p.tp, 1),
        ("[plugin].pp", p.pp, 1),
        ("[plugin].sp", p.sp, 1),
        ("[plugin].microbatch_size", p.microbatch_size, 1),
        ("[log].interval_steps", recipe.log.interval_steps, 1),
    ):
        if value < low:
            problems.append(f"{key}: must be at least {low}, got {value}")
    for key, value in (
        ("[schedule].max_steps", s.max_steps),
        ("[checkpoint].interval_steps", recipe.checkpoint.interval_steps),
        ("[eval].interval_steps", recipe.eval.interval_steps),
        ("[eval].batch_size", recipe.eval.batch_size),
    ):
        if value is not None and value < 1:
            problems.append(f"{key}: must be at least 1 (leave it out to turn it off), got {value}")
    if s.lr <= 0:
        problems.append(f"[schedule].lr: must be positive, got {s.lr}")
    if s.warmup_steps is not None and s.warmup_steps < 0:
        problems.append(f"[schedule].warmup_steps: must be 0 or more, got {s.warmup_steps}")
    for key in ("weight_decay", "grad_clip"):
        if getattr(s, key) < 0:
            problems.append(f"[schedule].{key}: must be 0 or more, got {getattr(s, key)}")
    if recipe.checkpoint.keep < 2:
        problems.append(
            f"[checkpoint].keep: must be at least 2 so a corrupt newest checkpoint has a fallback, "
            f"got {recipe.checkpoint.keep}"
        )
    if recipe.checkpoint.interval_seconds is not None and recipe.checkpoint.interval_seconds <= 0:
        problems.append("[checkpoint].interval_seconds: must be positive")
    if recipe.model.lora is not None:
        lora = recipe.model.lora
        if lora.r < 1:
            problems.append(f"[model.lora].r: must be at least 1, got {lora.r}")
        if not lora.target_modules:
            problems.append("[model.lora].target_modules: needs at least one module name")
        if p.name in GEMINI_PLUGINS:
            problems.append(
                f'[model.lora]: LoRA is not supported with plugin "{p.name}"; use zero2, ddp or 3d'
            )
    if p.name == "gemini_auto" and s.accumulation_steps > 1:
        problems.append(
            '[schedule].accumulation_steps: plugin "gemini_auto" does not support gradient '
            'accumulation; use 1 or plugin "gemini"'
        )
    if p.name != "3d":
        for key in ("tp", "pp", "sp"):
            if getattr(p, key) != 1:
                problems.append(f'[plugin].{key}: only the "3d" plugin shards models; got {key}={getattr(p, key)}')
        if p.zero_stage != 0:
            problems.append('[plugin].zero_stage: only applies to the "3d" plugin (zero2 is its own plugin)')
        if p.zero_cpu_offload:
            problems.append('[plugin].zero_cpu_offload: only applies to the "3d" plugin (zero2_cpu is its own plugin)')
    else:
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
    if p.name in GEMINI_PLUGINS and p.mixed_precision == "fp32":
        problems.append(f'[plugin].mixed_precision: plugin "{p.name}" trains in "bf16" or "fp16", not "fp32"')
    return problems


def environment_problems(recipe: Recipe, world: World) -> list[str]:
    """Checks that need the world the run is in."""
    problems = []
    p = recipe.plugin
    if not world.cuda:
        if p.name in CUDA_PLUGINS:
            problems.append(
                f'[plugin].name: "{p.name}" needs CUDA GPUs and this machine has none; '
                f'use name = "ddp" on CPU'
            )
        elif p.mixed_precision != "fp32":
            problems.append(
                f'[plugin].mixed_precision: "{p.mixed_precision}" needs CUDA; use "fp32" on CPU'
            )
    model_parallel = model_parallel_size(p)
    if world.size % model_parallel:
        if p.sp > 1 and p.sp_mode in ("split_gather", "ring"):
            what = f'tp*pp (sp_mode "{p.sp_mode}" runs inside the tp ranks)'
        else:
            what = "tp*pp*sp"
        problems.append(f"[plugin]: {what} = {model_parallel} does not divide the world size {world.size}")
    return problems
