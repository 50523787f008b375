"""The save step: the export directory, published by the lease holder once complete.

It holds a Hugging Face model (``config.json``, safetensors weights, tokenizer files)
that ``AutoModelForSequenceClassification.from_pretrained`` loads as is, plus the
recipe as written, the resolved plan, ``metrics.jsonl`` and ``eval.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from rmrun.recipe.schema import DataSection, LossSection, ModelSection, OutputSection, RunSection
from rmrun.store.keys import EVAL_FINAL_KEY

if TYPE_CHECKING:
    from rmrun.model.boost import Boosted
    from rmrun.run.context import RunContext
    from rmrun.run.graph import Step
    from rmrun.train.trainer import Trainer


def _export_files(
    ctx: RunContext, directory: str, trainer: Trainer, *, data, loss, model, run_name: str, reward_stats: dict | None
) -> None:
    from rmrun.model.model import model_family
    from rmrun.serve.exported import write_contract, write_model_card
    from rmrun.train.trainer import metrics_jsonl

    write_contract(directory, data=data, loss=loss, family=model_family(model), reward_stats=reward_stats)

    with open(os.path.join(directory, "recipe.toml"), "w") as f:
        f.write(ctx.recipe_text)
    assert ctx.plan is not None
    with open(os.path.join(directory, "plan.json"), "w") as f:
        f.write(ctx.plan.to_json())
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        f.write(metrics_jsonl(trainer.state))
    evaluation = ctx.store.open_verified(EVAL_FINAL_KEY)
    if evaluation is not None:
        with open(os.path.join(directory, "eval.json"), "wb") as f:
            f.write(evaluation.read_bytes("eval.json"))
    final = json.loads(evaluation.read_bytes("eval.json"))["final"] if evaluation is not None else None
    write_model_card(
        directory, run_name=run_name, model=model, data=data, evaluation=final, reward_stats=reward_stats, loss=loss
    )


def _write_model(ctx: RunContext, directory: str, boosted: Boosted, tokenizer) -> None:
    from rmrun.model.model import export_reward_model, exportable_tokenizer

    if boosted.sharded:
        # Every rank takes part in gathering the sharded weights.
        boosted.save_sharded_model(directory)
        if ctx.rank.is_main:
            boosted.unwrap().config.save_pretrained(directory)
            exportable_tokenizer(tokenizer, boosted.unwrap()).save_pretrained(directory)
    elif ctx.rank.is_main:
        export_reward_model(boosted.unwrap(), tokenizer, directory)


def _listing(local_dir: str) -> dict:
    """What was published: each file's size and sha256 (the files themselves live at the export URL)."""
    files = {}
    for name in sorted(os.listdir(local_dir)):
        path = os.path.join(local_dir, name)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        files[name] = {"size": os.path.getsize(path), "sha256": digest.hexdigest()}
    return {"files": files}


def _upload(local_dir: str, url: str, *, step: int) -> None:
    """Copy every file to the export URL; a previous partial upload is overwritten."""
    import fsspec

    from rmrun.runtime.faults import fault_point

    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)
    for i, name in enumerate(sorted(os.listdir(local_dir))):
        fs.put_file(os.path.join(local_dir, name), f"{path.rstrip('/')}/{name}")
        if i == 0:
            fault_point("export_upload", step=step)


def _reward_stats(ctx: RunContext, trainer: Trainer, *, seed: int, num_samples: int) -> dict:
    """Mean and std of the final model's rewards, both responses, over a uniform sample of
    ``num_samples`` training pairs drawn from ``seed`` (every pair when there are no more).
    Every rank draws the same sample and scores its share of each piece of it
    (``rmrun.run.scored``: a stop keeps every scored piece)."""
    from rmrun.run.scored import score_in_pieces
    from rmrun.train.sampler import reward_stats_sample

    total = len(trainer.data)
    sample = reward_stats_sample(seed=seed, num_pairs=total, num_samples=num_samples)
    data = trainer.data if len(sample) == total else trainer.data.subset(sample)
    result = score_in_pieces(ctx, trainer, data, what="stats", fault="stats_piece")
    return {
        "mean": (result["chosen_reward"] + result["rejected_reward"]) / 2,
        "std": result["reward_std"],
        "pairs": result["pairs"],
        "of": total,
        "data": "train",
    }


def _publish(ctx: RunContext, step: Step, tmp: str, trainer: Trainer, *, output, data, loss, model, run, stats) -> None:
    """Rank 0: the export's other files next to the model, uploaded, then its record committed."""
    from rmrun.run.scored import forget
    from rmrun.runtime.faults import fault_point

    plan = ctx.plan
    assert plan is not None
    _export_files(ctx, tmp, trainer, data=data, loss=loss, model=model, run_name=run.name, reward_stats=stats)
    if output.colossalchat:
        from rmrun.serve.handoff import write_colossalchat_reward_model

        write_colossalchat_reward_model(tmp)
    ctx.store.check_lease(ctx.held_lease)  # a superseded writer must not publish
    _upload(tmp, plan.export, step=trainer.state.step)
    staged = ctx.stage(step.key, meta={"url": plan.export, "step": trainer.state.step})
    staged.write_bytes("export.json", json.dumps(_listing(tmp), indent=2).encode())
    fault_point("export_commit", step=trainer.state.step)
    staged.commit()
    fault_point("export_done", step=trainer.state.step)
    ctx.say(f"exported the reward model to {plan.export}")
    if ctx.trackers is not None:
        with open(os.path.join(tmp, "README.md"), encoding="utf-8") as f:
            ctx.trackers.attach("model_card.md", f.read())
        ctx.trackers.note({"export": plan.export if "://" in plan.export else os.path.abspath(plan.export)})
    forget(ctx, "stats")
    ctx.say(
        f"next: rmrun report {plan.state} (an HTML page about the run, in ./rmrun-report-{run.name}); "
        f"rmrun eval {plan.export} DATA.jsonl (the model on other preference data)"
    )


def export(
    ctx: RunContext,
    step: Step,
    *,
    output: OutputSection,
    data: DataSection,
    loss: LossSection,
    model: ModelSection,
    run: RunSection,
) -> None:
    from rmrun.runtime.board import Board
    from rmrun.runtime.collective import barrier, broadcast

    trainer, plan = ctx.trainer, ctx.plan
    assert trainer is not None and plan is not None and ctx.boosted is not None
    stats = None
    if output.reward_stats:  # every rank takes part
        stats = _reward_stats(ctx, trainer, seed=run.seed, num_samples=output.reward_stats_pairs)
    tmp = broadcast(tempfile.mkdtemp(prefix="rmrun-export-") if ctx.rank.is_main else None)
    board = Board(
        f"{step.key}/export",
        timeout_seconds=run.collective_timeout_minutes * 60,
        rank=ctx.rank.rank,
        world_size=ctx.rank.world_size,
    )
    try:
        _write_model(ctx, tmp, ctx.boosted, ctx.tokenizer)
        barrier()
        with board:  # rank 0 uploads alone, however long that takes; the others wait on the board
            if ctx.rank.is_main:
                try:
                    _publish(
                        ctx, step, tmp, trainer, output=output, data=data, loss=loss, model=model, run=run, stats=stats
                    )
                except BaseException as e:
                    board.abandon(f"{type(e).__name__}: {e}".splitlines()[0])
                    raise
                board.post("exported", True)
            else:
                board.wait(lambda: board.read("exported") is not None, what="rank 0 to upload the export")
    finally:
        if ctx.rank.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
