"""Node-local copies of committed states: a resume reads each state once per node.

Every process of a resumed run needs the same files (the checkpoint, the tokenized
data). One process per node, its local rank 0, downloads the state into a fresh folder
of node-local scratch (``tempfile`` under that node's TMPDIR: no path is assumed to be
shared between nodes, only between the processes of one node), hashing each file as it
streams and checking it against the manifest; that one read is the verification. The
other processes of the node wait in a collective and then read that copy.

What each node's read found is gathered by every process, so all of them agree on one
outcome: a verified copy on every node; or the first corruption a node found, which the
caller (rank 0, the lease holder) quarantines before it falls back to another state; or
a failure to read (a network or disk error), raised everywhere. The copy is removed once
every process has left the ``with`` block.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from rmrun.runtime.collective import barrier, gather_all
from rmrun.runtime.dist import Rank
from rmrun.runtime.faults import node_copy_enabled
from rmrun.store import CorruptState, StateStore


class NodeReadFailed(OSError):
    """Another node could not read the state (its own process raises the original error)."""


@dataclass(frozen=True)
class NodeCopy:
    """This process's view of the state: ``directory`` holds its files, verified; or
    ``corrupt`` says what a node found wrong (then there is no directory)."""

    key: str
    directory: str | None
    corrupt: CorruptState | None
    meta: dict  # the manifest's meta, as the node's reader found it ({} when corrupt)


def _read_into(store: StateStore, key: str, directory: str) -> tuple[dict | None, dict]:
    """Download state ``key`` into ``directory``, hashing as it streams; (what went wrong
    or None, the manifest's meta)."""
    state = store.open_unverified(key)
    if state is None:
        return {"kind": "missing", "message": f"state {key} vanished from {store.root} while it was being read"}, {}
    try:
        state.get_dir(directory)
    except CorruptState as e:
        return {"kind": "corrupt", "message": str(e), "attempt": e.attempt, "reason": e.reason}, {}
    return None, state.manifest["meta"]


@contextlib.contextmanager
def node_copy(store: StateStore, key: str, *, rank: Rank) -> Iterator[NodeCopy]:
    """Collective (every process calls it): this node's verified copy of state ``key``."""
    reads_here = rank.is_node_leader or not node_copy_enabled()
    directory: str | None = None
    problem: dict | None = None
    meta: dict = {}
    error: Exception | None = None
    if reads_here:
        directory = tempfile.mkdtemp(prefix=f"rmrun-{key}-")
        try:
            problem, meta = _read_into(store, key, directory)
        except Exception as e:  # noqa: BLE001 - re-raised once every process knows
            error = e
            problem = {"kind": "failed", "message": f"{type(e).__name__}: {e}"}
    try:
        reports = gather_all(
            {"node": rank.node, "rank": rank.rank, "directory": directory, "problem": problem, "meta": meta}
        )
        yield _outcome(key, reports, rank=rank, own=directory, error=error)
    finally:
        barrier()  # every process of the node is done with its copy
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _outcome(key: str, reports: list[dict], *, rank: Rank, own: str | None, error: Exception | None) -> NodeCopy:
    """The same decision on every process, from every reader's report."""
    problems = [(r["rank"], r["problem"]) for r in reports if r["problem"]]
    for kind in ("failed", "missing", "corrupt"):
        found = [(reader, p) for reader, p in problems if p["kind"] == kind]
        if not found:
            continue
        reader, first = found[0]
        if kind == "failed":
            if error is not None:
                raise error
            raise NodeReadFailed(f"rank {reader} could not read state {key}: {first['message']}")
        if kind == "missing":
            raise RuntimeError(first["message"])
        corrupt = CorruptState(first["message"], attempt=first["attempt"], reason=first["reason"])
        return NodeCopy(key=key, directory=None, corrupt=corrupt, meta={})
    if own is not None:  # this process read the state itself
        reader = next(r for r in reports if r["rank"] == rank.rank)
    else:
        reader = next(r for r in reports if r["node"] == rank.node and r["directory"] is not None)
    return NodeCopy(key=key, directory=reader["directory"], corrupt=None, meta=reader["meta"])
