"""What every step shares: the store and its lease, the process's rank, the recipe and
its plan, and the typed hand-offs between steps.

A hand-off is a field that one step gives and later steps take, as the step graph
declares (``Step.gives`` / ``Step.takes`` in rmrun/run/graph.py): the runner checks before
it runs anything that each field a step takes is given by a step it needs, and after a
step that it set what it gives. None until then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rmrun.recipe import make_plan
from rmrun.recipe.plan import Plan
from rmrun.recipe.schema import Recipe
from rmrun.runtime.dist import Rank
from rmrun.store import Lease, StagedState, StateStore
from rmrun.store.keys import PLAN_RECORD, quarantined_record, step_record

if TYPE_CHECKING:
    from rmrun.data import TokenizedPairs
    from rmrun.model.boost import Boosted
    from rmrun.track import Trackers
    from rmrun.train.hooks import Hooks
    from rmrun.train.trainer import Trainer, TrainState

# The fields steps hand to one another; Step.gives and Step.takes name them.
HANDOFFS = ("tokenizer", "data", "plan", "boosted", "train_state", "trainer")


@dataclass
class RunContext:
    store: StateStore
    lease: Lease | None  # held by rank 0 only
    rank: Rank
    recipe_path: str
    recipe_text: str
    identity: dict
    recipe: Recipe | None = None  # what the plan is made from (set_plan)
    log: Any = print

    # Hand-offs, each set by one step kind.
    tokenizer: Any = None  # tokenize: the Hugging Face tokenizer
    data: dict[str, TokenizedPairs] | None = None  # tokenize: "train" and, with eval files, "eval"
    plan: Plan | None = None  # boost, once the pair count is known
    boosted: Boosted | None = None  # boost: model, optimizer and scheduler through the Booster
    train_state: TrainState | None = None  # boost: fresh, or from the newest loadable checkpoint
    trainer: Trainer | None = None  # the first train epoch

    # Not a hand-off: made by the first train epoch that trains (none when every epoch is
    # done), used by the later ones, closed by the run session on every path.
    hooks: Hooks | None = None
    # Not a hand-off: rank 0's experiment trackers (None: log.trackers names none), opened by
    # the run session, fed by the steps, closed by the session on every path.
    trackers: Trackers | None = None
    # Not a hand-off: where the furthest committed history piece ends, as rank 0's checkpoint
    # uploads last saw it (None: not known yet), so that each checkpoint need not list them all.
    history_end: int | None = None

    @property
    def held_lease(self) -> Lease:
        """The lease, for a write to the store; only rank 0 holds one, so only rank 0 writes."""
        if self.lease is None:
            raise RuntimeError(f"rank {self.rank.rank} holds no lease: only rank 0 writes to the store")
        return self.lease

    def set_plan(self, *, num_pairs: int, source_pairs=None) -> Plan:
        """Resolve the plan for the tokenized pair count (and each source's, with data.sources);
        rank 0 records it for status."""
        assert self.recipe is not None, "a context that makes a plan holds the recipe"
        self.plan = make_plan(
            self.recipe,
            world_size=self.rank.world_size,
            num_pairs=num_pairs,
            cuda=self.rank.cuda,
            source_pairs=source_pairs,
        )
        if self.rank.is_main:
            self.store.write_record(PLAN_RECORD, self.plan.to_dict(), lease=self.held_lease)
            self._attach_plan()
        return self.plan

    def revise_plan(self, plan: Plan) -> None:
        """The plan as the built model revised it (``Plan.with_unused_parameters``); recorded again."""
        self.plan = plan
        if self.rank.is_main:
            self.store.write_record(PLAN_RECORD, plan.to_dict(), lease=self.held_lease)
            self._attach_plan()

    def _attach_plan(self) -> None:
        if self.trackers is not None and self.plan is not None:
            import json

            self.trackers.attach("plan.json", json.dumps(self.plan.to_dict(), indent=2))

    def handoffs(self) -> dict[str, Any]:
        """The hand-off fields as they are now."""
        return {name: getattr(self, name) for name in HANDOFFS}

    def read_record(self, name: str) -> dict | None:
        return self.store.read_record(step_record(name))

    def write_record(self, name: str, data: dict) -> None:
        if self.rank.is_main:
            self.store.write_record(step_record(name), data, lease=self.held_lease)

    def stage(self, key: str, *, meta: dict) -> StagedState:
        """Stage state ``key`` under this run's lease (rank 0).

        A quarantined state at the same key (a corrupt checkpoint the run has since
        recomputed) is replaced: it is moved aside (``<root>/quarantined/``, never deleted) and
        its quarantine note is kept as a record for status, with where it went.
        """
        lease = self.held_lease
        notes = self.store.quarantined(key)  # this key's folder alone: staging stays cheap as keys pile up
        if notes:
            where = self.store.set_aside(key, lease=lease)
            for note in notes:
                note = {**note, "moved_to": where}
                self.store.write_record(quarantined_record(key, note["attempt"]), note, lease=lease)
        return self.store.stage(key, lease=lease, meta=meta)

    def say(self, message: str) -> None:
        if self.rank.is_main:
            self.log(message)
