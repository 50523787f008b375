"""The boost step (transient, rebuilt in every process): reward model, plugin,
optimizer and scheduler through the Booster, then the newest committed checkpoint."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from rmrun.recipe.schema import ModelSection, PluginSection, RunSection, ScheduleSection

if TYPE_CHECKING:
    from rmrun.model.boost import Boosted
    from rmrun.run.context import RunContext
    from rmrun.run.graph import Step
    from rmrun.train.trainer import TrainState


# What a committed checkpoint that verifies but cannot be loaded raises: a refused or
# broken pickle, a state dict with other keys or shapes, JSON that does not parse.
# Not OSError (a full disk or a network error says nothing about the checkpoint).
LOAD_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
    AttributeError,
)


def _is_corrupt(error: BaseException) -> bool:
    """A load error that condemns the checkpoint, not the machine or the lease."""
    import torch

    from rmrun.store import LeaseLost

    return isinstance(error, LOAD_ERRORS) and not isinstance(error, (LeaseLost, torch.cuda.OutOfMemoryError))


def _load_newest_loadable(ctx: RunContext, boosted: Boosted) -> tuple[str | None, dict | None]:
    """Load the newest checkpoint that loads on every rank; one whose files do not match
    their manifest as they are read, or that verifies but does not load, is quarantined
    with the reason and the previous one is tried. Raises NoValidState (via
    latest_checkpoint_key) when none is left."""
    from rmrun.runtime.collective import gather_all
    from rmrun.store import CorruptState
    from rmrun.train.checkpoint import latest_checkpoint_key, load_checkpoint

    reported = False
    while (key := latest_checkpoint_key(ctx)) is not None:
        if not reported:
            _say_quarantined(ctx)  # latest_checkpoint_key has just checked manifests and sizes, quarantining what fails
            reported = True
        loaded, error = None, None
        try:
            loaded = load_checkpoint(ctx, key, boosted=boosted)
        except CorruptState as e:  # the one read of its files found a mismatch; every rank raises it
            if ctx.rank.is_main:
                ctx.store.quarantine(key, reason=e.reason, lease=ctx.held_lease)
            ctx.say(f"quarantined {key} ({e.attempt}): {e}")  # as _say_quarantined reports latest()'s
            continue
        except LOAD_ERRORS as e:
            if not _is_corrupt(e):
                raise
            error = f"does not load: {type(e).__name__}: {_first_line(e)}"
        errors = [e for e in gather_all(error) if e]
        if not errors:
            return key, loaded
        if ctx.rank.is_main:
            ctx.store.quarantine(key, reason=errors[0], lease=ctx.held_lease)
        ctx.say(f"quarantined checkpoint {key}: {errors[0]}; trying the previous one")
    return None, None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "no message"


def _say_quarantined(ctx: RunContext) -> None:
    """Resume says what it (or an earlier attempt) quarantined, and why."""
    if not ctx.rank.is_main:
        return
    for note in ctx.store.quarantined():
        ctx.say(f"quarantined {note['key']} ({note['attempt']}): {note['reason']}")


def _record_start(ctx: RunContext, *, key: str | None, state: TrainState) -> None:
    """``starts/<generation>``: where this start of the run took up training (a resume, when a
    checkpoint was loaded), for ``rmrun report``."""
    import time

    from rmrun.store.keys import start_record

    if ctx.rank.is_main and ctx.lease is not None:
        ctx.store.write_record(
            start_record(ctx.lease.generation),
            {
                "generation": ctx.lease.generation,
                "checkpoint": key,
                "step": state.step,
                "epoch": state.epoch,
                "pairs_consumed": state.pairs_consumed,
                "world_size": ctx.rank.world_size,
                "time": time.time(),
            },
            lease=ctx.lease,
        )


def build_model(
    ctx: RunContext,
    step: Step,
    *,
    model: ModelSection,
    plugin: PluginSection,
    schedule: ScheduleSection,
    run: RunSection,
) -> None:
    from rmrun.model.boost import boost
    from rmrun.model.model import build_reward_model, unreached_parameters
    from rmrun.recipe.backbone import model_attention
    from rmrun.recipe.plugins import cpu_precision_note
    from rmrun.runtime.faults import fault_point, restore_enabled
    from rmrun.train.build import source_pairs
    from rmrun.train.checkpoint import seed_everything
    from rmrun.train.trainer import TrainState

    assert ctx.data is not None and ctx.recipe is not None
    plan = ctx.set_plan(
        num_pairs=len(ctx.data["train"]), source_pairs=source_pairs(ctx.data["train"], data=ctx.recipe.data)
    )
    seed_everything(run.seed + ctx.rank.rank)
    net = build_reward_model(
        model,
        tokenizer=ctx.tokenizer,
        grad_checkpoint=plugin.grad_checkpoint,
        attn_implementation=model_attention(plugin, forward=plan.forward),
        seed=run.seed,
    )
    if plan.plugin_args.get("find_unused_parameters") is False:
        # DDP without find_unused_parameters stops at the second step where a trainable
        # parameter gets no gradient; with it, it walks the autograd graph every step.
        unreached = unreached_parameters(net)
        if unreached:
            plan = plan.with_unused_parameters(unreached)
            ctx.revise_plan(plan)
            ctx.say(f"find_unused_parameters=True: {plan.find_unused_reason}")
    if not ctx.rank.cuda and (note := cpu_precision_note(plugin, cpu_bf16=ctx.rank.world.cpu_bf16)):
        ctx.say(note)
    boosted = boost(net, plan=plan, plugin=plugin, schedule=schedule, cuda=ctx.rank.cuda)
    key, loaded = _load_newest_loadable(ctx, boosted)
    if key is None or loaded is None:
        state = TrainState(seed=run.seed)
    else:
        state = TrainState.from_dict(loaded)
        if not restore_enabled("position"):
            state.pairs_consumed = 0
        ctx.say(
            f"resumed from {key}: epoch {state.epoch}, step {state.step}, {state.pairs_consumed} pairs of the epoch consumed"
        )
    _record_start(ctx, key=key, state=state)
    ctx.boosted = boosted
    ctx.train_state = state
    fault_point("boosted", step=state.step, rank=ctx.rank.rank)
