"""The resolved plan: values derived from a recipe and the world it runs in.

The recipe file is never rewritten; what rmrun computed from it (step counts,
warmup, world size, plugin arguments) lives here, is printed by ``rmrun check`` and
is stored beside the run's state and in the export.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from rmrun.recipe.data_section import epoch_pairs_of, source_quotas
from rmrun.recipe.plugins import PLUGINS, autocast_dtype, booster_mixed_precision, plugin_call
from rmrun.recipe.schema import Recipe

DEFAULT_WARMUP_FRACTION = 0.025
# Mixture-of-experts decoders: an expert no token of a batch is routed to gets no gradient in
# that step, so DDP has to look for unused parameters every step.
ROUTED_TYPES = frozenset({"jamba", "jetmoe", "mixtral", "phimoe", "qwen2_moe", "qwen3_moe"})
ALL_REACH_REWARD = (
    "every trainable parameter reaches the reward (the boost step checks it on the built model, "
    "before training, and turns it on where one does not)"
)


@dataclass(frozen=True)
class Plan:
    world_size: int
    dp_size: int
    num_pairs: int
    num_pairs_exact: bool
    pairs_per_micro_batch: int
    pairs_per_step: int
    steps_per_epoch: int
    num_epochs: int
    total_steps: int
    warmup_steps: int
    plugin_class: str
    plugin_args: dict
    booster_mixed_precision: str | None
    state: str
    export: str
    autocast: str | None = None  # the forward's autocast dtype where rmrun does it (ddp in bf16)
    forward: str = "standard"  # "shared-prompt" or "standard" (rmrun.recipe.backbone.choose_forward)
    forward_reason: str = ""
    find_unused_reason: str = ""  # why DDP's find_unused_parameters is on or off (ddp only)
    epoch_pairs: int = 0  # the pairs an epoch trains on (data.sources' draw); 0 in plans before it: num_pairs
    sources: tuple = ()  # per source of data.sources: {name, weight, pairs, per_epoch} (pairs: -1 unknown)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_unused_parameters(self, names: list[str]) -> Plan:
        """This plan with DDP's find_unused_parameters on, for a model where ``names`` (trainable
        parameters) get no gradient: without it DDP stops at the second step."""
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return dataclasses.replace(
            self,
            plugin_args={**self.plugin_args, "find_unused_parameters": True},
            find_unused_reason=f"{len(names)} trainable parameter(s) get no gradient from the reward: {shown}",
        )

    def mixture_text(self) -> str:
        """Each source's pairs, weight and draw per epoch ("" without data.sources)."""
        parts = []
        for s in self.sources:
            pairs = f"{s['pairs']} pairs" if s["pairs"] >= 0 else "pairs not counted yet"
            times = f" ({s['per_epoch'] / s['pairs']:.2f}x)" if s["pairs"] > 0 else ""
            parts.append(f"{s['name']}: {pairs}, weight {s['weight']:g}, {s['per_epoch']} per epoch{times}")
        return f"{self.epoch_pairs} pairs per epoch; " + "; ".join(parts) if parts else ""

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(**data)


def steps_per_epoch(num_pairs: int, *, pairs_per_step: int) -> int:
    return max(1, math.ceil(num_pairs / pairs_per_step))


@dataclass(frozen=True)
class _Steps:
    dp_size: int
    pairs_per_micro_batch: int
    pairs_per_step: int
    steps_per_epoch: int
    total_steps: int


def _steps(recipe: Recipe, *, world_size: int, num_pairs: int) -> _Steps:
    from rmrun.recipe.validate import model_parallel_size

    s = recipe.schedule
    dp_size = max(1, world_size // model_parallel_size(recipe.plugin))
    per_micro = s.batch_size * dp_size
    per_step = per_micro * s.accumulation_steps
    per_epoch = steps_per_epoch(epoch_pairs_of(recipe.data, num_pairs), pairs_per_step=per_step)
    total = per_epoch * s.max_epochs
    if s.max_steps is not None:
        total = min(total, s.max_steps)
    return _Steps(dp_size, per_micro, per_step, per_epoch, total)


def warmup_problem(recipe: Recipe, *, world_size: int, num_pairs: int) -> str | None:
    """``schedule.warmup_steps`` longer than the run, once the pair count is known (the static
    check compares it with max_steps alone); None when it fits or is left to its default."""
    s = recipe.schedule
    if s.warmup_steps is None:
        return None
    steps = _steps(recipe, world_size=world_size, num_pairs=num_pairs)
    if s.warmup_steps <= steps.total_steps:
        return None
    # Past max_steps it is refused at load already, so here the epochs set the length.
    return (
        f"[schedule].warmup_steps: {s.warmup_steps} is more than the run's {steps.total_steps} optimizer steps "
        f"({steps.steps_per_epoch} per epoch x {s.max_epochs} epoch(s), {num_pairs} pairs at "
        f"{steps.pairs_per_step} per step); use at most {steps.total_steps}, or leave it out for 2.5% of the steps"
    )


def find_unused(recipe: Recipe) -> tuple[bool, str]:
    """DDP's find_unused_parameters for the recipe's model, and why: on only where some
    trainable parameters may get no gradient in a step (a mixture of experts' routing); the
    boost step turns it on where the built model has parameters the reward never reaches.
    (LoRA's frozen weights do not count: DDP leaves out what does not require a gradient.)"""
    from rmrun.recipe.backbone import BackboneError, local_model_type

    try:
        model_type = local_model_type(recipe.model)
    except BackboneError:  # refused where the recipe is checked; here it only decides nothing
        model_type = None
    if model_type in ROUTED_TYPES:
        return True, f"a {model_type} model routes each token to some experts; the others get no gradient in a step"
    return False, ALL_REACH_REWARD


def make_plan(
    recipe: Recipe,
    *,
    world_size: int,
    num_pairs: int,
    num_pairs_exact: bool = True,
    cuda: bool = True,
    source_pairs=None,
) -> Plan:
    """The run's resolved plan. ``cuda``: whether it runs on CUDA (the forward ``data.share_prompt =
    "auto"`` picks in bf16 depends on it; where unknown, True keeps the standard forward).
    ``source_pairs``: the training pairs of each of data.sources, where known."""
    from rmrun.recipe.backbone import choose_forward

    p, s = recipe.plugin, recipe.schedule
    steps = _steps(recipe, world_size=world_size, num_pairs=num_pairs)
    dp_size, per_micro, per_step = steps.dp_size, steps.pairs_per_micro_batch, steps.pairs_per_step
    per_epoch, total = steps.steps_per_epoch, steps.total_steps
    num_epochs = min(s.max_epochs, math.ceil(total / per_epoch))
    # Where the pair count was not known at check (remote data), a longer warmup is cut to the run.
    warmup = s.warmup_steps if s.warmup_steps is not None else math.ceil(DEFAULT_WARMUP_FRACTION * total)
    class_name, args = plugin_call(p, s)
    unused_reason = ""
    if PLUGINS[p.name].finds_unused_parameters:
        args["find_unused_parameters"], unused_reason = find_unused(recipe)
    forward = choose_forward(recipe.data, recipe.model, p, cuda=cuda)
    return Plan(
        world_size=world_size,
        dp_size=dp_size,
        num_pairs=num_pairs,
        num_pairs_exact=num_pairs_exact,
        pairs_per_micro_batch=per_micro,
        pairs_per_step=per_step,
        steps_per_epoch=per_epoch,
        num_epochs=num_epochs,
        total_steps=total,
        warmup_steps=min(warmup, total),
        plugin_class=class_name,
        plugin_args=args,
        booster_mixed_precision=booster_mixed_precision(p),
        state=recipe.state_url,
        export=recipe.export_url,
        autocast=autocast_dtype(p),
        forward=forward.name,
        forward_reason=forward.reason,
        find_unused_reason=unused_reason,
        epoch_pairs=epoch_pairs_of(recipe.data, num_pairs),
        sources=_mixture(recipe, num_pairs=num_pairs, source_pairs=source_pairs),
    )


def _mixture(recipe: Recipe, *, num_pairs: int, source_pairs) -> tuple:
    """Per source of data.sources: its weight, its pairs (-1: not known yet) and what an epoch draws."""
    sources = recipe.data.sources
    quotas = source_quotas([s.weight for s in sources], epoch_pairs_of(recipe.data, num_pairs)) if sources else []
    counts = list(source_pairs) if source_pairs is not None else [-1] * len(sources)
    return tuple(
        {"name": s.name, "weight": s.weight, "pairs": int(n), "per_epoch": q}
        for s, n, q in zip(sources, counts, quotas)
    )
