"""The evaluate step: final metrics on the eval files, committed as JSON."""

from __future__ import annotations

import json


def run(ctx, step, *, loss, eval) -> None:
    trainer = ctx.artifacts["trainer"]
    history = trainer.state.evals
    if history and history[-1]["step"] == trainer.state.step:
        final = history[-1]
    else:
        final = trainer.evaluate()
    if ctx.rank.is_main:
        staged = ctx.stage(step.produces, meta={"step": trainer.state.step})
        staged.write_bytes("eval.json", json.dumps({"final": final, "history": history}, indent=2).encode())
        staged.commit()
        ctx.say(f"final eval: accuracy {final['accuracy']:.4f}, loss {final['loss']:.4f}, "
                f"longer-wins baseline {final['longer_wins_accuracy']:.4f}")
