"""Leases and fencing: one writer per store root at a time.

Each acquisition creates ``lease/<generation:012d>.json`` create-only with the next
generation; a writer whose generation is no longer the newest has lost its lease and
must publish nothing (:class:`LeaseLost`). On a local root the holder also keeps a
non-blocking ``flock`` on ``lease.lock``, so a second live process is refused at once
and ``rmrun status`` can tell whether the holder is still alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
from dataclasses import dataclass
from typing import TextIO

from rmrun.store.errors import LeaseLost, StoreError
from rmrun.store.layout import LEASE_DIR, LEASE_FILE_RE, LOCK_NAME, Layout, json_bytes, new_run_id, utc_now


@dataclass(frozen=True)
class Lease:
    """Right to write a store root, valid until a newer generation is acquired."""

    generation: int
    holder: str
    run_id: str


class Leases:
    """The lease records of one root, and the local lock while this process holds it."""

    def __init__(self, layout: Layout, *, root: str):
        self._layout = layout
        self._backend = layout.backend
        self._root = root
        self._lock_file: TextIO | None = None

    def acquire(self, *, holder: str) -> Lease:
        """Take the next generation (previous max + 1); on a local root, also the flock."""
        if not isinstance(holder, str) or not holder:
            raise StoreError("lease holder must be a non-empty str")
        locked_here = self._lock_root()
        try:
            return self._create_next_lease(holder)
        except BaseException:
            if locked_here:
                self._unlock_root()
            raise

    def current_generation(self) -> int:
        """Newest lease generation recorded under the root, 0 if none."""
        return max(self._generations(), default=0)

    def check(self, lease: Lease) -> None:
        """Raise LeaseLost if a newer generation than ``lease`` exists."""
        generations = self._generations()
        newest = max(generations, default=0)
        if newest > lease.generation:
            holder = self._holder(newest)
            raise LeaseLost(
                f"lease lost: generation {lease.generation} superseded by {newest} (holder {holder}) on {self._root}"
            )
        if lease.generation not in generations:
            where = posixpath.join(self._root, LEASE_DIR)
            raise LeaseLost(f"lease lost: generation {lease.generation} is not recorded under {where}")

    def holder_alive(self) -> bool | None:
        """Local roots: whether a live process holds the lease lock; None where it cannot be told."""
        if not self._backend.local:
            return None
        if self._lock_file is not None:
            return True
        try:
            with open(os.path.join(self._root, LOCK_NAME)) as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    return True
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                return False
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Drop the local lock if held; lease records are kept (generations only grow)."""
        self._unlock_root()

    # ----------------------------------------------------------------- internals

    def _create_next_lease(self, holder: str) -> Lease:
        """Write lease/<max+1>.json create-only, retrying when another writer wins the race."""
        run_id = new_run_id()
        for _ in range(100):
            generation = self.current_generation() + 1
            record = {
                "generation": generation,
                "holder": holder,
                "run_id": run_id,
                "pid": os.getpid(),
                "time": utc_now(),
            }
            try:
                self._backend.create(self._layout.lease_path(generation), json_bytes(record))
            except FileExistsError:
                if self._run_id(generation) != run_id:  # not our own retried PUT
                    continue
            return Lease(generation=generation, holder=holder, run_id=run_id)
        raise StoreError(f"could not acquire a lease on {self._root}: too many concurrent acquirers")

    def _generations(self) -> set[int]:
        """Generations of every lease record."""
        names = self._backend.names(self._backend.path(LEASE_DIR))
        return {int(m.group(1)) for m in map(LEASE_FILE_RE.match, names) if m}

    def _record(self, generation: int) -> dict:
        """Lease record of ``generation`` ({} if unreadable)."""
        try:
            return json.loads(self._backend.read(self._layout.lease_path(generation)))
        except (FileNotFoundError, ValueError):
            return {}

    def _holder(self, generation: int) -> str:
        return str(self._record(generation).get("holder", "unknown"))

    def _run_id(self, generation: int) -> str | None:
        return self._record(generation).get("run_id")

    def _lock_root(self) -> bool:
        """Local roots: take a non-blocking flock on <root>/lease.lock; True if taken now."""
        if not self._backend.local or self._lock_file is not None:
            return False
        os.makedirs(self._root, exist_ok=True)
        lock_file = open(os.path.join(self._root, LOCK_NAME), "a+")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.seek(0)
            pid = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise StoreError(f"state {self._root} is in use by another process (pid {pid})") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._lock_file = lock_file
        return True

    def _unlock_root(self) -> None:
        """Release the local flock, if held."""
        if self._lock_file is not None:
            lock_file, self._lock_file = self._lock_file, None
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            lock_file.close()
