"""The step graph as data, and the runner that walks it.

A step has a name, the steps it needs, the state key it produces (persistent steps)
and the recipe sections it receives. The runner asks the state store what is done,
skips it, runs the rest in order and records each step's status. It never imports a
step's code itself: ``kind`` is looked up in :data:`STEP_KINDS` when the step runs.

Every step is idempotent, so a run killed anywhere can simply be started again: a step
whose output is already committed adopts it (a needed, done step loads it); one whose
previous attempt died mid-way finds only an uncommitted attempt, removed when the next
lease is taken, and runs again. ``rmrun.faults.FAULT_POINTS`` names each crash point.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rmrun.store.keys import EVAL_FINAL_KEY, EXPORT_KEY, epoch_key

# kind -> "module:function"; the function is called as fn(ctx, step, **sections).
STEP_KINDS = {
    "tokenize": "rmrun.steps.tokenize:run",
    "boost": "rmrun.steps.boost:run",
    "train_epoch": "rmrun.steps.train:run_epoch",
    "evaluate": "rmrun.steps.evaluate:run",
    "save": "rmrun.steps.save:run",
}


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    needs: tuple[str, ...] = ()
    produces: str | None = None  # state key; None for transient steps
    sections: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)

    @property
    def persistent(self) -> bool:
        return self.produces is not None


def build_graph(*, num_epochs: int, tokenize_key: str, has_eval: bool) -> list[Step]:
    """tokenize → boost → train epochs → evaluate → save."""
    steps = [
        Step("tokenize", "tokenize", produces=tokenize_key, sections=("data", "model")),
        Step("boost", "boost", needs=("tokenize",), sections=("model", "plugin", "schedule", "run")),
    ]
    previous = "boost"
    for epoch in range(num_epochs):
        name = f"train/epoch-{epoch}"
        steps.append(
            Step(
                name,
                "train_epoch",
                needs=(previous, "boost"),
                produces=epoch_key(epoch),
                sections=("schedule", "loss", "checkpoint", "eval", "log", "data", "run"),
                params={"epoch": epoch},
            )
        )
        previous = name
    if has_eval:
        steps.append(Step("evaluate", "evaluate", needs=(previous, "boost"), produces=EVAL_FINAL_KEY, sections=("loss", "eval")))
        previous = "evaluate"
    steps.append(Step("save", "save", needs=(previous, "boost"), produces=EXPORT_KEY, sections=("output", "data", "loss", "model", "run")))
    return steps


def _resolve(kind: str) -> Callable:
    module, _, function = STEP_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), function)


def pending_steps(steps: list[Step], is_done: Callable[[Step], bool]) -> list[Step]:
    """Persistent steps not yet done, and everything they need, in graph order.

    A needed step that is already done (tokenize) still runs: it loads its committed
    output instead of computing it again.
    """
    by_name = {s.name: s for s in steps}
    needed = {s.name for s in steps if s.persistent and not is_done(s)}
    frontier = list(needed)
    while frontier:
        for need in by_name[frontier.pop()].needs:
            if need not in needed:
                needed.add(need)
                frontier.append(need)
    return [s for s in steps if s.name in needed]


class Runner:
    """Walks the graph; records pending / running / done / failed per step."""

    def __init__(self, ctx: Any, steps: list[Step], *, sections: dict[str, Any], record: Callable[[str, dict], None]):
        self.ctx = ctx
        self.steps = steps
        self.sections = sections
        self.record = record

    def run(self, is_done: Callable[[Step], bool]) -> list[str]:
        """Run what is not done; returns the names of the steps that ran."""
        ran = []
        for step in pending_steps(self.steps, is_done):
            attempts = self._attempts(step)
            self.record(step.name, {"state": "running", "attempts": attempts, "started": time.time()})
            try:
                _resolve(step.kind)(self.ctx, step, **{name: self.sections[name] for name in step.sections})
            except BaseException as e:
                try:
                    self.record(step.name, {"state": "failed", "attempts": attempts, "finished": time.time(),
                                            "error": f"{type(e).__name__}: {e}"[:500]})
                except Exception:  # noqa: BLE001 - a full or read-only disk: the first error is the one to report
                    pass
                raise
            self.record(step.name, {"state": "done", "attempts": attempts, "finished": time.time()})
            ran.append(step.name)
        return ran

    def _attempts(self, step: Step) -> int:
        previous = self.ctx.read_record(step.name) or {}
        return int(previous.get("attempts", 0)) + 1
