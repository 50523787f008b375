"""The evaluate step: final metrics on the eval files, committed as JSON.

Idempotent: when a previous attempt committed ``eval-final`` and died before the
export, the committed result is adopted, not computed or staged again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rmrun.recipe.schema import EvalSection, LossSection

if TYPE_CHECKING:
    from rmrun.run.context import RunContext
    from rmrun.run.graph import Step


def _say(ctx: RunContext, final: dict) -> None:
    from rmrun.train.hooks import best_of_n_words, eval_scalars, source_words

    if ctx.trackers is not None:  # rank 0; a tracker that holds this eval already is not sent it again
        ctx.trackers.log(final["step"], eval_scalars(final))
    ctx.say(
        f"final eval: held-out accuracy {final['accuracy']:.4f} on {final['pairs']} pairs "
        f"(the longer response wins: {final['longer_wins_accuracy']:.4f}), loss {final['loss']:.4f}"
        f"{best_of_n_words(final)}{source_words(final)}"
    )


def evaluate_final(ctx: RunContext, step: Step, *, loss: LossSection, eval: EvalSection) -> None:
    from rmrun.run.scored import forget_eval, score_eval
    from rmrun.runtime.collective import broadcast
    from rmrun.runtime.faults import fault_point

    trainer = ctx.trainer
    assert trainer is not None
    committed = broadcast(ctx.store.open_verified(step.key) is not None if ctx.rank.is_main else None)
    if committed:
        state = ctx.store.open_unverified(step.key) if ctx.rank.is_main else None
        if state is not None:
            _say(ctx, json.loads(state.read_bytes("eval.json"))["final"])
        return
    history = trainer.state.evals
    if history and history[-1]["step"] == trainer.state.step:
        final = history[-1]
    else:
        # The training loop evaluates its last step; a stop left that eval unfinished (its
        # committed pieces are used): finished here, it joins the history as it would have.
        final = score_eval(ctx, trainer)
        history.append(final)
    if ctx.rank.is_main:
        staged = ctx.stage(step.key, meta={"step": trainer.state.step})
        staged.write_bytes("eval.json", json.dumps({"final": final, "history": history}, indent=2).encode())
        fault_point("eval_final_commit", step=trainer.state.step)
        staged.commit()
        forget_eval(ctx, trainer)  # the pieces of an eval scored here, once its result is committed
        _say(ctx, final)
    fault_point("eval_final_done", step=trainer.state.step, rank=ctx.rank.rank)
