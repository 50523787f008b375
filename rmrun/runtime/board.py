"""Waiting for other ranks without a collective that can time out.

Work some ranks do while others wait (a peer finishing its pieces of the tokenization, rank 0
committing and assembling them) is not waited for in a barrier, which gives up after
``run.collective_timeout_minutes`` however busy the working rank is. A :class:`Board` posts
small messages through the key-value store of ``torch.distributed`` (the TCP store the
launch set up, the one the process group itself rendezvoused through): a worker posts what
it finished, and a waiter polls for it. While a board is open every rank beats on it (a thread
adds to the rank's counter every couple of seconds), and a waiter gives up only when the ranks
it waits for have not beaten for the collective timeout: a phase of any length (tokenizing a
million pairs, rank 0 assembling and uploading them) never times out while the ranks doing it
are alive, and a rank that is gone or frozen still ends the wait.

A rank that leaves the board on an exception (a stop signal, an error) posts that it stopped
(:meth:`Board.abandon`),
so the ranks waiting for it stop too instead of waiting out the timeout. Python signal
handlers run between the polls, so a stop signal is acted on at once.

In a single process there is no one to wait for: the board is a dict.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from rmrun.runtime.process import StopRequested

ABANDONED = "abandoned"


class Abandoned(StopRequested):
    """Another rank stopped while this one waited for it: requeue, as for a stop signal."""

    signum = None


class WaitedTooLong(StopRequested):
    """The ranks this one waited for gave no sign of life for the collective timeout: requeue."""

    signum = None


def _store():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


class Board:
    """Messages under ``name`` (unique within a start, e.g. the state key); a context manager:
    inside it, this rank beats, and leaving it on an exception abandons the board."""

    POLL_SECONDS = 0.1
    BEAT_SECONDS = 2.0

    def __init__(self, name: str, *, timeout_seconds: float, rank: int = 0, world_size: int = 1):
        self.name = name
        self.timeout_seconds = timeout_seconds
        self.rank = rank
        self.world_size = world_size
        self._store = _store()
        self._local: dict[str, bytes] = {}
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None

    def __enter__(self) -> Board:
        from rmrun.runtime.faults import heartbeat_enabled

        if self._store is not None and heartbeat_enabled():
            self._beater = threading.Thread(target=self._beat, name="rmrun-board-beat", daemon=True)
            self._beater.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:  # leaving on an error or a stop: no rank is to wait for this one
            self.abandon(f"{type(exc).__name__}: {exc}".splitlines()[0])
        self._stop_beating.set()
        if self._beater is not None:
            self._beater.join()

    def _beat(self) -> None:
        while not self._stop_beating.wait(self.BEAT_SECONDS):
            try:
                self.advance(f"beat/{self.rank}")
            except Exception:  # noqa: BLE001 - the job is going away; the waiters will know
                return

    def _others_beats(self) -> int:
        return sum(self.count(f"beat/{r}") for r in range(self.world_size) if r != self.rank)

    def _key(self, key: str) -> str:
        return f"rmrun/{self.name}/{key}"

    def post(self, key: str, value) -> None:
        """Post a JSON value under ``key`` (once; a second post replaces it)."""
        data = json.dumps(value).encode()
        if self._store is None:
            self._local[key] = data
        else:
            self._store.set(self._key(key), data)

    def read(self, key: str):
        """The value posted under ``key``, or None when nothing is posted yet (never waits)."""
        if self._store is None:
            data = self._local.get(key)
        else:
            if not self._store.check([self._key(key)]):
                return None
            data = self._store.get(self._key(key))
        return None if data is None else json.loads(data)

    def advance(self, counter: str, by: int = 1) -> int:
        """Add ``by`` to ``counter`` (from 0) and return its new value."""
        if self._store is None:
            value = int(self._local.get(counter, b"0")) + by
            self._local[counter] = str(value).encode()
            return value
        return int(self._store.add(self._key(counter), by))

    def count(self, counter: str) -> int:
        return self.advance(counter, 0)

    def abandon(self, why: str) -> None:
        """Say this rank stopped, so that no rank waits for it; never raises."""
        try:
            self.post(ABANDONED, {"rank": self.rank, "why": why})
        except Exception:  # noqa: BLE001 - the store may be gone with the job; nothing to tell then
            pass

    def wait(self, done: Callable[[], bool], *, what: str, between=None) -> None:
        """Poll until ``done()``; ``between()`` (if given) runs at each poll (rank 0 commits what
        peers posted). Raises :class:`WaitedTooLong` when no other rank has beaten for the
        timeout, :class:`Abandoned` when another rank posted that it stopped."""
        progress = self._others_beats
        last, since = progress(), time.monotonic()
        while True:
            if between is not None:
                between()
            if done():
                return
            gone = self.read(ABANDONED)
            if gone is not None and gone["rank"] != self.rank:
                raise Abandoned(f"rank {gone['rank']} stopped while rank {self.rank} waited for {what}: {gone['why']}")
            now = progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > self.timeout_seconds:
                raise WaitedTooLong(
                    f"rank {self.rank} waited {self.timeout_seconds / 60:g} minutes "
                    f"(run.collective_timeout_minutes) for {what} without a sign of life from the other ranks"
                )
            time.sleep(self.POLL_SECONDS)
