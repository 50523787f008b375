"""Durable state store for rmrun: leases, fencing and atomically committed states.

A job runs on preemptible machines and must resume exactly, so everything it
needs to resume lives under one store root (a local path, ``file://``,
``memory://`` or any fsspec URL such as ``s3://bucket/run``)::

    <root>/lease/<generation:012d>.json          one record per lease ever taken
    <root>/lease.lock                            local only: flock held by the live holder
    <root>/states/<key>/<attempt>/<files...>     the files of one staging attempt
    <root>/states/<key>/<attempt>/MANIFEST.json  written last: path, size, sha256 of each file
    <root>/states/<key>/COMMIT                   created once, names the winning attempt
    <root>/states/<key>/QUARANTINE-<attempt>.json   why a committed attempt was rejected
    <root>/records/<name>.json                   small last-writer-wins JSON records

Commit protocol (object stores have no atomic rename):

1. every file is written under a fresh ``<attempt>`` directory (never reused:
   lease generation + run id + random suffix), hashed while it is written;
2. ``MANIFEST.json`` is written last and its sha256 computed;
3. the lease is checked (fencing): a writer whose generation was superseded
   raises :class:`LeaseLost` and publishes nothing;
4. ``COMMIT`` is created create-only (local: ``os.link`` of an fsynced temp
   file; s3: ``PUT`` with ``If-None-Match: *``; other backends: check then
   write under a process lock), so at most one attempt ever wins a key.

Several writers, one commit: the lease holder stages an attempt and hands its name to
other processes (the ranks of a job, each on its own machine); each gets an
:class:`AttemptWriter` that can only upload files into that attempt, several at a
time, and returns their (name, size, sha256). The holder adds those entries to its
staged state; before writing the manifest, ``commit()`` checks that every entry is
present at its size, and refuses to commit otherwise. A writer that fails simply
never reports: the holder does not commit, and the attempt is garbage.

Readers only trust a key whose ``COMMIT`` exists, whose manifest hashes to the
value in ``COMMIT`` and whose files match the manifest; anything else is
quarantined and the next older state is used.  Choosing a state need not read
it twice: ``latest(prefix, hash_files=False)`` checks the manifest and the file
sizes (one listing), and the one real read of the files (``get_dir``) hashes them
as they stream; a mismatch there raises :class:`CorruptState`, the caller
quarantines the state and asks ``latest`` again.  Deleting removes ``COMMIT``
first, so a half-deleted state is never chosen.

Keys are single path segments (``[A-Za-z0-9_][A-Za-z0-9._-]*``) that sort
lexicographically: zero-pad numbers (``step-000100``).  File names inside a
state may contain ``/``.  Record names may contain ``/``.

The package imports only the standard library, and fsspec when a root is not local.

Formats: every COMMIT and manifest says the layout it was written in (``format``). A
state in a newer layout than this rmrun reads stops the run (NewerFormat) before it
writes anything: it is never quarantined, rewritten or deleted. A quarantined state that
a run replaces is moved aside to ``<root>/quarantined/<key>.<time>/``, never deleted.

Faults: a remote root's every operation retries transient failures (connection errors,
timeouts, 5xx, throttling) for a bounded time (``rmrun.store.retry``), then raises
StoreUnreachable: nothing committed is lost, and a later start resumes.

Layout of the package: ``backends`` (the local and fsspec storage behind
:class:`~rmrun.store.backends.StorageBackend`), ``layout`` (paths, names, JSON
documents), ``lease`` (leases, fencing, the local flock), ``states`` (staging,
commit, manifests, verified reads), ``statestore`` (:class:`StateStore`, the one
interface the rest of rmrun uses), ``keys`` (every key and record name rmrun writes).
"""

from __future__ import annotations

from rmrun.store.errors import CorruptState, LeaseLost, NewerFormat, NoValidState, StoreError, StoreUnreachable
from rmrun.store.lease import Lease
from rmrun.store.states import AttemptWriter, CommittedState, StagedState
from rmrun.store.statestore import StateStore

__all__ = [
    "AttemptWriter",
    "CommittedState",
    "CorruptState",
    "Lease",
    "LeaseLost",
    "NewerFormat",
    "NoValidState",
    "StagedState",
    "StateStore",
    "StoreError",
    "StoreUnreachable",
]
