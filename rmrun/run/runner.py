"""One run of a recipe in this process, from taking the lease to giving it back.

:class:`RunSession` owns everything a run holds: the lease (rank 0), the identity
check, the recipe record, the context and its plan, the step graph, the done-check
and the step records (pending → running → done or failed, with the attempt count).
One ``finally`` closes what the run opened, whatever happened: the hooks (progress
bar, TensorBoard writer), then the lease. It raises what the run raised; the caller
maps that to an exit code.

The session never imports a step's code: the graph names each step's function
(rmrun/run/graph.py, ``STEP_KINDS``), imported when the step runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rmrun.recipe import RecipeError, environment_problems
from rmrun.recipe.data_section import has_eval
from rmrun.recipe.schema import Recipe
from rmrun.run.context import HANDOFFS, RunContext
from rmrun.run.graph import GraphError, Step, build_graph, pending_steps, step_function
from rmrun.runtime.collective import broadcast
from rmrun.runtime.dist import Rank
from rmrun.store import Lease, StateStore

if TYPE_CHECKING:
    from rmrun.run.fingerprint import InputDigests

from rmrun.store.keys import IDENTITY_KEY, INPUT_DIGESTS_RECORD, LEASE_HOLDER_RECORD, PLAN_RECORD, RECIPE_RECORD


class RunSession:
    """Runs ``recipe`` (read from ``recipe_path``) in this process of the group ``rank``."""

    def __init__(self, recipe_path: str, recipe: Recipe, *, rank: Rank):
        self.recipe_path = recipe_path
        self.recipe = recipe
        self.rank = rank
        self.store: StateStore | None = None
        self.lease: Lease | None = None  # rank 0, once taken
        self.ctx: RunContext | None = None
        self.digests: InputDigests | None = None  # rank 0: the inputs' content digests, once per start

    def run(self) -> None:
        """Run what is not done yet; close everything on every path."""
        error: BaseException | None = None
        try:
            self._check_environment()
            self.ctx = self._open()
            self._check_identity(self.ctx)
            self._open_trackers(self.ctx)
            self._run_graph(self.ctx)
        except BaseException as e:
            error = e
            raise
        finally:
            self.close(error=error)

    def close(self, *, error: BaseException | None) -> None:
        """Close the hooks and the trackers, then give the lease back. Each is tried; when the
        run is failing (``error``) its error is the one reported, else the first error closing raised."""
        closers: list[Callable[[], None]] = []
        if self.ctx is not None and self.ctx.hooks is not None:
            closers.append(self.ctx.hooks.close)
        if self.ctx is not None and self.ctx.trackers is not None:
            closers.append(functools.partial(self.ctx.trackers.close, outcome=_outcome(error)))
        if self.lease is not None:
            closers.append(self._release)
        errors = []
        for close in closers:
            try:
                close()
            except Exception as e:  # noqa: BLE001 - the next one still closes
                errors.append(e)
        if errors and error is None:
            raise errors[0]

    def _release(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None and self.store is not None:
            self.store.release(lease)

    # ------------------------------------------------------------- opening

    def _check_environment(self) -> None:
        """The checks that need the process group (world size, CUDA)."""
        problems = environment_problems(self.recipe, self.rank.world)
        if problems:
            raise RecipeError([f"{self.recipe_path}: {p}" for p in problems])

    def _open(self) -> RunContext:
        """Take the lease (rank 0) and record who holds it and the recipe as written."""
        store = self.store = StateStore(self.recipe.state_url, retry_seconds=self.recipe.run.store_retry_seconds)
        with open(self.recipe_path) as f:
            text = f.read()
        if self.rank.is_main:
            store.check_formats()  # before the first write: a newer rmrun's state is left as it is
            holder = f"{os.uname().nodename}:{os.getpid()}"
            lease = self.lease = store.acquire_lease(holder=holder)
            store.write_record(
                LEASE_HOLDER_RECORD,
                {"holder": holder, "generation": lease.generation, "time": time.time()},
                lease=lease,
            )
            store.clean_staging(lease=lease)
            # The recipe as written, for `rmrun report` (the identity holds the resolved keys).
            store.write_record(
                RECIPE_RECORD,
                {"name": self.recipe.run.name, "path": os.path.abspath(self.recipe_path), "text": text},
                lease=lease,
            )
        # The identity holds the inputs' contents: rank 0 reads what it has not hashed before.
        identity = broadcast(self._identity(store) if self.rank.is_main else None)
        return RunContext(
            store=store,
            lease=self.lease,
            rank=self.rank,
            recipe_path=self.recipe_path,
            recipe_text=text,
            identity=identity,
            recipe=self.recipe,
        )

    def _identity(self, store: StateStore) -> dict:
        from rmrun.run.fingerprint import InputDigests, run_identity

        self.digests = InputDigests(store.read_record(INPUT_DIGESTS_RECORD))
        return run_identity(self.recipe, self.digests)

    def _check_identity(self, ctx: RunContext) -> None:
        """Refuse to resume under a recipe whose result-changing keys differ."""
        from rmrun.recipe.schema import fresh_run_hint
        from rmrun.run.fingerprint import changed_keys

        problem = None
        if ctx.rank.is_main:
            state = ctx.store.open_verified(IDENTITY_KEY)
            if state is None:
                staged = ctx.stage(IDENTITY_KEY, meta={})
                staged.write_bytes("identity.json", json.dumps(ctx.identity, indent=2, sort_keys=True).encode())
                staged.commit()
            else:
                stored = json.loads(state.read_bytes("identity.json"))
                changes = changed_keys(stored, ctx.identity)
                if changes:
                    problem = (
                        f"{self.recipe_path}: cannot resume the run in {ctx.store.root}: what it computes "
                        f"differs from the stored run ({'; '.join(changes)}); undo the change to resume, or "
                        f"{fresh_run_hint(self.recipe)} to start afresh"
                    )
        problem = broadcast(problem)
        if problem:
            raise RecipeError([problem])

    def _open_trackers(self, ctx: RunContext) -> None:
        """Rank 0: the experiment trackers, opening in the background (``rmrun.track``)."""
        if not (ctx.rank.is_main and self.recipe.log.trackers):
            return
        import sys

        from rmrun.recipe.loader import flatten, recipe_to_dict
        from rmrun.track import open_trackers

        ctx.trackers = open_trackers(
            self.recipe.log,
            run_name=self.recipe.run.name,
            store=ctx.store,
            lease=ctx.held_lease,
            config=flatten(recipe_to_dict(self.recipe)),
            recipe_text=ctx.recipe_text,
            warn=lambda message: print(f"rmrun: warning: {message}", file=sys.stderr, flush=True),
        )

    # ------------------------------------------------------------- the graph

    def _graph(self, ctx: RunContext) -> list[Step]:
        from rmrun.run.fingerprint import tokenize_key

        recipe = self.recipe
        key = None
        if ctx.rank.is_main:
            assert self.digests is not None  # set by _open on rank 0
            key = tokenize_key(recipe.data, recipe.model, self.digests)
            if self.digests.record() != self.digests.cache:
                ctx.store.write_record(INPUT_DIGESTS_RECORD, self.digests.record(), lease=ctx.held_lease)
        key = broadcast(key)
        # The number of epochs depends on the pair count only through max_steps; the
        # stored plan (when there is one) has it, else the recipe's max_epochs.
        stored = ctx.store.read_record(PLAN_RECORD)
        num_epochs = stored["num_epochs"] if stored else recipe.schedule.max_epochs
        return build_graph(num_epochs=num_epochs, tokenize_key=key, has_eval=has_eval(recipe.data))

    def _is_done(self, ctx: RunContext, step: Step) -> bool:
        # The tokenized data is read whole by every run that resumes, and hashed on that
        # read; here its manifest and sizes are enough. The other states are small.
        return ctx.store.open_verified(step.key, hash_files=step.kind != "tokenize") is not None

    def _run_graph(self, ctx: RunContext) -> None:
        steps = self._graph(ctx)
        walk = GraphWalk(ctx, steps, sections=_sections(self.recipe))
        persistent = [s for s in steps if s.persistent]
        done = broadcast([s.name for s in persistent if self._is_done(ctx, s)] if ctx.rank.is_main else None)
        if len(done) == len(persistent):
            ctx.say(f"run {self.recipe.run.name} is complete: the export is at {self.recipe.export_url}")
            return
        if done:
            ctx.say(f"resuming run {self.recipe.run.name} from {ctx.store.root}: done {', '.join(done)}")
        walk.run(done=set(done))


def _outcome(error: BaseException | None) -> str:
    """How a start ended, for the trackers: finished, preempted (to be resumed) or failed."""
    from rmrun.errors import EXIT_FAILED, EXIT_UNUSABLE, EXIT_USAGE, exit_code

    if error is None:
        return "finished"
    return "failed" if exit_code(error) in (EXIT_FAILED, EXIT_USAGE, EXIT_UNUSABLE) else "preempted"


def _sections(recipe: Recipe) -> dict[str, object]:
    return {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}


class GraphWalk:
    """Runs the steps of a graph that are not done, in order, recording each one's state
    (running, then done or failed, with its attempt count) and checking that it set the
    context fields it gives and no other."""

    def __init__(self, ctx: RunContext, steps: list[Step], *, sections: dict[str, object]):
        unknown = sorted({name for s in steps for name in s.gives + s.takes} - set(HANDOFFS))
        if unknown:
            raise GraphError(f"the step graph names {', '.join(unknown)}, not fields the run context hands off")
        self.ctx = ctx
        self.steps = steps
        self.sections = sections
        self.order = {s.name: i for i, s in enumerate(steps)}

    def run(self, *, done: set[str]) -> list[str]:
        """Run the steps not in ``done`` and those they need; returns the names that ran."""
        steps = pending_steps(self.steps, done=done)
        self._record_pending(steps)
        ran = []
        for step in steps:
            self.run_step(step)
            ran.append(step.name)
        return ran

    def _record_pending(self, steps: list[Step]) -> None:
        """A "pending" record for each step about to run that has none yet, so that
        ``rmrun status`` shows what is left, not only what has started."""
        if not self.ctx.rank.is_main:
            return
        for step in steps:
            if self.ctx.read_record(step.name) is None:
                self._record(step, {"state": "pending", "attempts": 0})

    def run_step(self, step: Step) -> None:
        from rmrun.runtime.process import STOP

        STOP.where = f"in step {step.name}"
        attempts = self._attempts(step)
        self._record(step, {"state": "running", "attempts": attempts, "started": time.time()})
        try:
            before = self.ctx.handoffs()
            step_function(step.kind)(self.ctx, step, **{name: self.sections[name] for name in step.sections})
            self._check_gives(step, before)
        except BaseException as e:
            from rmrun.runtime.process import StopRequested

            stopped = isinstance(e, (StopRequested, KeyboardInterrupt))
            try:
                self._record(
                    step,
                    {
                        "state": "stopped" if stopped else "failed",
                        "attempts": attempts,
                        "finished": time.time(),
                        "error": f"{type(e).__name__}: {e}"[:500],
                    },
                )
            except Exception:  # noqa: BLE001 - a full or read-only disk: the first error is the one to report
                pass
            raise
        self._record(step, {"state": "done", "attempts": attempts, "finished": time.time()})

    def _check_gives(self, step: Step, before: dict) -> None:
        after = self.ctx.handoffs()
        unset = [name for name in step.gives if after[name] is None]
        undeclared = [name for name in HANDOFFS if after[name] is not before[name] and name not in step.gives]
        if unset:
            raise GraphError(f"step {step.name} did not set {', '.join(unset)}, which it gives")
        if undeclared:
            raise GraphError(f"step {step.name} set {', '.join(undeclared)}, which it does not give")

    def _record(self, step: Step, data: dict) -> None:
        self.ctx.write_record(step.name, {"name": step.name, "order": self.order[step.name], **data})

    def _attempts(self, step: Step) -> int:
        previous = self.ctx.read_record(step.name) or {}
        return int(previous.get("attempts", 0)) + 1
