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

A copy asked to be kept (``keep=True``: the tokenized data, the same at every start and
as large as the data set) stays on the node, under ``TMPDIR/rmrun-node-cache/``, named by
the store, the key and the manifest's digest. It was verified as it was read, and it records
the stored files' stamps (size, mtime and inode on disk; the object's ETag or the like), so
the next start on that node whose state has the same manifest and unchanged stamps uses it
without reading or hashing it again (one listing): a resume's start-up does not grow with
the data. A stored file written again since, a store that gives no stamps, or a kept file
of another size means the state is read again. Only the newest kept copy per store stays,
and the copies of a store no start on the node has used for three days are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rmrun.runtime.collective import barrier, gather_all
from rmrun.runtime.dist import Rank
from rmrun.runtime.faults import node_copy_enabled
from rmrun.store import CommittedState, CorruptState, StateStore


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


def _read_into(
    store: StateStore, key: str, directory: str, state: CommittedState | None = None
) -> tuple[dict | None, dict]:
    """Download state ``key`` (``state``, when already opened) into ``directory``, hashing as
    it streams; (what went wrong or None, the manifest's meta)."""
    state = state or store.open_unverified(key)
    if state is None:
        return {"kind": "missing", "message": f"state {key} vanished from {store.root} while it was being read"}, {}
    try:
        state.get_dir(directory)
    except CorruptState as e:
        return {"kind": "corrupt", "message": str(e), "attempt": e.attempt, "reason": e.reason}, {}
    return None, state.manifest["meta"]


UNUSED_SECONDS = 3 * 24 * 3600  # a store's kept copies no start used for this long are removed
VERIFIED = ".rmrun-verified"  # in a kept copy: the manifest digest and stored stamps it was read with


def _private_cache(store: StateStore) -> str | None:
    """This store's folder of kept copies, created private to this user; None when the
    folder exists but is another user's or open to others (then nothing is kept)."""
    root = os.path.join(tempfile.gettempdir(), "rmrun-node-cache")
    folder = os.path.join(root, hashlib.sha256(store.root.encode()).hexdigest()[:16])
    for path in (root, folder):
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isdir(path) or os.path.islink(path):
            return None
    os.utime(folder)  # used now: what the three days count from
    for name in os.listdir(root):
        other = os.path.join(root, name)
        with contextlib.suppress(OSError):
            if other != folder and os.lstat(other).st_mtime < time.time() - UNUSED_SECONDS:
                shutil.rmtree(other, ignore_errors=True)
    return folder


def _kept_copy(store: StateStore, key: str) -> tuple[str | None, dict | None, dict] | None:
    """(directory, problem, meta) of the kept copy of ``key``: the node's own when its
    manifest and stamps match, else read (and verified) now and kept in place of the older
    one; None when nothing can be kept here (no private folder: the caller reads as usual)."""
    folder = _private_cache(store)
    if folder is None:
        return None
    state = store.open_unverified(key)
    if state is None:
        return (
            None,
            {"kind": "missing", "message": f"state {key} vanished from {store.root} while it was being read"},
            {},
        )
    digest = hashlib.sha256(json.dumps([key, state.attempt, state.manifest], sort_keys=True).encode()).hexdigest()
    kept = os.path.join(folder, f"{key}-{digest[:24]}")
    stamps = state.stamps()
    seal = json.dumps({"manifest": digest, "stamps": stamps}, sort_keys=True)
    if None not in stamps.values() and _still_whole(kept, seal, state.manifest["files"]):
        return kept, None, state.manifest["meta"]
    staging = tempfile.mkdtemp(prefix=".reading-", dir=folder)
    try:
        problem, meta = _read_into(store, key, staging, state)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if problem is not None:
        shutil.rmtree(staging, ignore_errors=True)
        return None, problem, meta
    with open(os.path.join(staging, VERIFIED), "w") as f:
        f.write(seal)
    shutil.rmtree(kept, ignore_errors=True)  # a copy whose files changed
    try:
        os.rename(staging, kept)
    except OSError:  # another run on this node kept the same copy first
        shutil.rmtree(staging, ignore_errors=True)
        if not _still_whole(kept, seal, state.manifest["files"]):
            raise
    for name in os.listdir(folder):  # the older kept copies of this store
        if name != os.path.basename(kept) and not name.startswith(".reading-"):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    return kept, None, meta


def _still_whole(directory: str, seal: str, files: list[dict]) -> bool:
    """Whether ``directory`` is a kept copy sealed with ``seal``, its files of their sizes."""
    try:
        with open(os.path.join(directory, VERIFIED)) as f:
            if f.read() != seal:
                return False
        return all(os.path.getsize(os.path.join(directory, *e["path"].split("/"))) == e["size"] for e in files)
    except OSError:
        return False


@contextlib.contextmanager
def node_copy(store: StateStore, key: str, *, rank: Rank, keep: bool = False) -> Iterator[NodeCopy]:
    """Collective (every process calls it): this node's verified copy of state ``key``;
    with ``keep``, a copy that stays on the node for the next start (see the module)."""
    reads_here = rank.is_node_leader or not node_copy_enabled()
    keep = keep and node_copy_enabled()
    directory: str | None = None
    problem: dict | None = None
    meta: dict = {}
    error: Exception | None = None
    kept = False
    if reads_here:
        try:
            found = _kept_copy(store, key) if keep else None
            if found is not None:
                (directory, problem, meta), kept = found, True
            else:
                directory = tempfile.mkdtemp(prefix=f"rmrun-{key}-")
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
        if directory is not None and not kept:
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
