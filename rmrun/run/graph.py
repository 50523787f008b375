"""The step graph as data.

A step has a name, the steps it needs, the state key it produces (persistent steps),
the recipe sections it receives, and the run-context fields it gives to later steps
and takes from earlier ones (rmrun/run/context.py). :func:`check_graph` refuses a graph in
which a step takes a field that no step it needs (directly or not) gives, or in which
two steps give one field. The runner (rmrun/run/runner.py) asks the state store what is
done, skips it and runs the rest in order. Neither imports a step's code: ``kind`` is
looked up in :data:`STEP_KINDS` when the step runs.

Every step is idempotent, so a run killed anywhere can simply be started again: a step
whose output is already committed adopts it (a needed, done step loads it); one whose
previous attempt died mid-way finds only an uncommitted attempt, removed when the next
lease is taken, and runs again. ``rmrun.runtime.faults.FAULT_POINTS`` names each crash point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from rmrun.store.keys import EVAL_FINAL_KEY, EXPORT_KEY, epoch_key

# kind -> "module:function"; the function is called as fn(ctx, step, **sections).
STEP_KINDS = {
    "tokenize": "rmrun.run.steps.tokenize:tokenize_data",
    "boost": "rmrun.run.steps.boost:build_model",
    "train_epoch": "rmrun.run.steps.train_epoch:train_epoch",
    "evaluate": "rmrun.run.steps.evaluate:evaluate_final",
    "save": "rmrun.run.steps.save:export",
}


class GraphError(Exception):
    """A step graph whose hand-offs do not add up, or a step that broke its declaration."""


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    needs: tuple[str, ...] = ()
    produces: str | None = None  # state key; None for transient steps
    sections: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)
    gives: tuple[str, ...] = ()  # run-context fields this step sets
    takes: tuple[str, ...] = ()  # run-context fields this step reads, given by steps it needs

    @property
    def persistent(self) -> bool:
        return self.produces is not None

    @property
    def key(self) -> str:
        """The state key a persistent step produces."""
        if self.produces is None:
            raise GraphError(f"step {self.name} is transient: it produces no state")
        return self.produces


def build_graph(*, num_epochs: int, tokenize_key: str, has_eval: bool) -> list[Step]:
    """tokenize → boost → train epochs → evaluate → save."""
    steps = [
        Step(
            "tokenize",
            "tokenize",
            produces=tokenize_key,
            sections=("data", "model", "run"),
            gives=("tokenizer", "data"),
        ),
        Step(
            "boost",
            "boost",
            needs=("tokenize",),
            sections=("model", "plugin", "schedule", "run"),
            takes=("tokenizer", "data"),
            gives=("plan", "boosted", "train_state"),
        ),
    ]
    previous = "boost"
    for epoch in range(num_epochs):
        name = f"train/epoch-{epoch}"
        # Every later epoch needs the first, so it runs (done or not) and makes the trainer.
        first = epoch == 0
        steps.append(
            Step(
                name,
                "train_epoch",
                needs=(previous, "boost"),
                produces=epoch_key(epoch),
                sections=("schedule", "loss", "checkpoint", "eval", "log", "data", "run"),
                params={"epoch": epoch},
                takes=("tokenizer", "data", "plan", "boosted", "train_state") if first else ("plan", "trainer"),
                gives=("trainer",) if first else (),
            )
        )
        previous = name
    if has_eval:
        steps.append(
            Step(
                "evaluate",
                "evaluate",
                needs=(previous, "boost"),
                produces=EVAL_FINAL_KEY,
                sections=("loss", "eval"),
                takes=("trainer",),
            )
        )
        previous = "evaluate"
    steps.append(
        Step(
            "save",
            "save",
            needs=(previous, "boost"),
            produces=EXPORT_KEY,
            sections=("output", "data", "loss", "model", "run"),
            takes=("tokenizer", "plan", "boosted", "trainer"),
        )
    )
    check_graph(steps)
    return steps


def check_graph(steps: list[Step]) -> None:
    """Raise :class:`GraphError` unless every step needs only earlier steps, takes only
    fields given by steps it needs (directly or not), and each field has one giver."""
    problems = []
    givers: dict[str, str] = {}
    upstream: dict[str, set[str]] = {}  # step -> every step it needs, directly or not
    for step in steps:
        if step.kind not in STEP_KINDS:
            problems.append(f"step {step.name}: unknown kind {step.kind!r}")
        upstream[step.name] = set()
        for need in step.needs:
            if need not in upstream:
                problems.append(f"step {step.name} needs {need!r}, which is not an earlier step")
                continue
            upstream[step.name] |= {need} | upstream[need]
        for name in step.gives:
            if name in givers:
                problems.append(f"steps {givers[name]} and {step.name} both give {name!r}")
            givers.setdefault(name, step.name)
        for name in step.takes:
            if givers.get(name) not in upstream[step.name]:
                problems.append(f"step {step.name} takes {name!r}, which no step it needs gives")
    if problems:
        raise GraphError("the step graph does not add up: " + "; ".join(problems))


def step_function(kind: str) -> Callable:
    """The function that runs steps of ``kind``, imported when first needed."""
    module, _, function = STEP_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), function)


def pending_steps(steps: list[Step], *, done: set[str]) -> list[Step]:
    """Persistent steps not in ``done``, and everything they need, in graph order.

    A needed step that is already done (tokenize) still runs: it loads its committed
    output instead of computing it again.
    """
    by_name = {s.name: s for s in steps}
    needed = {s.name for s in steps if s.persistent and s.name not in done}
    frontier = list(needed)
    while frontier:
        for need in by_name[frontier.pop()].needs:
            if need not in needed:
                needed.add(need)
                frontier.append(need)
    return [s for s in steps if s.name in needed]
