"""What every step shares: the store and its lease, the process's rank, the plan,
and the in-memory artifacts transient steps hand to later ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rmrun.dist import Rank
from rmrun.recipe.plan import Plan
from rmrun.store import Lease, StateStore
from rmrun.store.keys import PLAN_RECORD, quarantined_record, step_record


@dataclass
class RunContext:
    store: StateStore
    lease: Lease | None  # held by rank 0 only
    rank: Rank
    recipe_path: str
    recipe_text: str
    identity: dict
    plan_for: Callable[[int], Plan] | None = None  # num_pairs -> plan, known once data is tokenized
    plan: Plan | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    log: Any = print

    def set_plan(self, *, num_pairs: int) -> Plan:
        """Resolve the plan for the tokenized pair count; rank 0 records it for status."""
        self.plan = self.plan_for(num_pairs)
        if self.rank.is_main:
            self.store.write_record(PLAN_RECORD, self.plan.to_dict(), lease=self.lease)
        return self.plan

    def read_record(self, name: str) -> dict | None:
        return self.store.read_record(step_record(name))

    def write_record(self, name: str, data: dict) -> None:
        if self.rank.is_main:
            self.store.write_record(step_record(name), data, lease=self.lease)

    def stage(self, key: str, *, meta: dict):
        """Stage state ``key`` under this run's lease (rank 0).

        A quarantined state at the same key (a corrupt checkpoint the run has since
        recomputed) is replaced; its quarantine note is kept as a record for status.
        """
        for note in self.store.quarantined(key):  # this key's folder alone: staging stays cheap as keys pile up
            self.store.write_record(quarantined_record(key, note['attempt']), note, lease=self.lease)
            self.store.delete(key, lease=self.lease)
        return self.store.stage(key, lease=self.lease, meta=meta)

    def say(self, message: str) -> None:
        if self.rank.is_main:
            self.log(message)
