"""What every step shares: the store and its lease, the process's rank, the plan,
and the in-memory artifacts transient steps hand to later ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rmrun.dist import Rank
from rmrun.recipe.plan import Plan
from rmrun.store import Lease, StateStore


@dataclass
class RunContext:
    store: StateStore
    lease: Lease | None  # held by rank 0 only
    rank: Rank
    recipe_path: str
    recipe_text: str
    identity: dict
    plan: Plan | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    log: Any = print

    def read_record(self, name: str) -> dict | None:
        return self.store.read_record(f"steps/{name.replace('/', '-')}")

    def write_record(self, name: str, data: dict) -> None:
        if self.rank.is_main:
            self.store.write_record(f"steps/{name.replace('/', '-')}", data, lease=self.lease)

    def say(self, message: str) -> None:
        if self.rank.is_main:
            self.log(message)
