"""The boost step (transient, rebuilt in every process): reward model, plugin,
optimizer and scheduler through the Booster, then the newest committed checkpoint."""

from __future__ import annotations

from rmrun.recipe.schema import ModelSection, PluginSection, RunSection, ScheduleSection


def run(ctx, step, *, model: ModelSection, plugin: PluginSection, schedule: ScheduleSection, run: RunSection) -> None:
    from rmrun.boost import boost
    from rmrun.checkpoint import latest_checkpoint_key, load_checkpoint, seed_everything
    from rmrun.faults import fault_point, restore_enabled
    from rmrun.model import build_reward_model
    from rmrun.train import TrainState

    data = ctx.artifacts["data"]
    plan = ctx.set_plan(num_pairs=len(data["train"]))
    seed_everything(run.seed + ctx.rank.rank)
    # The gemini and 3d plugins switch flash attention on themselves (enable_flash_attention).
    attn = "flash_attention_2" if plugin.flash_attn and plugin.name in ("ddp", "zero2", "zero2_cpu") else None
    net = build_reward_model(
        model, tokenizer=ctx.artifacts["tokenizer"], grad_checkpoint=plugin.grad_checkpoint,
        attn_implementation=attn, seed=run.seed,
    )
    boosted = boost(net, plan=plan, plugin=plugin, schedule=schedule, cuda=ctx.rank.cuda)
    key = latest_checkpoint_key(ctx)
    if key is None:
        state = TrainState(seed=run.seed)
    else:
        state = TrainState.from_dict(load_checkpoint(ctx, key, boosted=boosted))
        if not restore_enabled("position"):
            state.pairs_consumed = 0
        ctx.say(f"resumed from {key}: epoch {state.epoch}, step {state.step}, {state.pairs_consumed} pairs of the epoch consumed")
    ctx.artifacts["boosted"] = boosted
    ctx.artifacts["train_state"] = state
    fault_point("boosted", step=state.step, rank=ctx.rank.rank)
