"""StateStore: the states, lease and records under one root URL, the one interface
through which everything rmrun keeps goes (protocol in ``rmrun/store/__init__.py``)."""

from __future__ import annotations

import errno
import json
import posixpath

from rmrun.store.backends import BUCKET_PROTOCOLS, _make_backend, normalise_root
from rmrun.store.errors import AlreadyQuarantined, CorruptState, NewerFormat, NoValidState, StoreError
from rmrun.store.layout import (
    ATTEMPT_RE,
    COMMIT_NAME,
    QUARANTINE_PREFIX,
    RECORDS_DIR,
    SEGMENT_RE,
    SET_ASIDE_DIR,
    Layout,
    attempt_generation,
    check_format,
    check_key,
    check_prefix,
    check_record_name,
    json_bytes,
    json_copy,
    new_attempt_name,
    quarantine_name,
    utc_now,
)
from rmrun.store.lease import Lease, Leases
from rmrun.store.states import (
    AttemptWriter,
    CommittedState,
    StagedState,
    committed_attempt,
    read_commit,
    read_manifest,
)


class StateStore:
    """States, leases and records under one root URL (see the package docstring)."""

    def __init__(self, root: str, *, storage_options: dict | None = None, retry_seconds: float | None = None):
        """``retry_seconds``: how long a remote root's operations retry a store that does not
        answer before StoreUnreachable (rmrun.store.retry; default 120)."""
        self.root = normalise_root(root)
        self._backend = _make_backend(self.root, dict(storage_options or {}), retry_seconds=retry_seconds)
        self._layout = Layout(self._backend)
        self._leases = Leases(self._layout, root=self.root)

    def __repr__(self) -> str:
        return f"StateStore({self.root!r})"

    def url(self, *parts: str) -> str:
        """URL of ``parts`` under the root (posixpath.join)."""
        return posixpath.join(self.root, *parts)

    # ----------------------------------------------------------------- lease and fencing

    def acquire_lease(self, *, holder: str) -> Lease:
        """Take the next lease generation (previous max + 1), superseding older holders.

        On a local root this also takes a non-blocking flock on ``<root>/lease.lock``
        that lives as long as this StateStore object (or until release()); a
        second live process gets StoreError "... is in use by another process".
        """
        return self._leases.acquire(holder=holder)

    def current_generation(self) -> int:
        """Newest lease generation recorded under the root, 0 if none."""
        return self._leases.current_generation()

    def check_lease(self, lease: Lease) -> None:
        """Raise LeaseLost if a newer generation than ``lease`` exists."""
        self._leases.check(lease)

    def holder_alive(self) -> bool | None:
        """Local roots: whether a live process holds the lease lock; None where it cannot be told."""
        return self._leases.holder_alive()

    def release(self, lease: Lease) -> None:
        """Drop the local lock if held; lease records are kept (generations only grow)."""
        self._leases.release()

    def check_reachable(self) -> None:
        """Raise FileNotFoundError when the bucket of an object-store root does not exist."""
        fs = getattr(self._backend, "fs", None)
        protocols = (
            fs.protocol
            if fs is not None and isinstance(fs.protocol, (tuple, list))
            else (getattr(fs, "protocol", None),)
        )
        if fs is None or not set(protocols) & BUCKET_PROTOCOLS:
            return
        bucket = self._backend.base.split("/", 1)[0]
        if not fs.exists(bucket):
            raise FileNotFoundError(errno.ENOENT, f"no such bucket {bucket!r}", bucket)

    # ----------------------------------------------------------------- states

    def stage(self, key: str, *, lease: Lease, meta: dict) -> StagedState:
        """Start writing a new attempt for ``key``; nothing is visible until commit()."""
        check_key(key)
        meta = json_copy(meta, what="state meta")
        self.check_lease(lease)
        if COMMIT_NAME in self._backend.names(self._layout.key_path(key)):
            raise StoreError(f"state {key} already committed")
        attempt = new_attempt_name(lease.generation, lease.run_id)
        return StagedState(self._layout, self._leases, key, attempt=attempt, lease=lease, meta=meta)

    def attempt_writer(self, key: str, attempt: str) -> AttemptWriter:
        """A writer of files into ``attempt`` of ``key``, staged by the lease holder (which
        passes its name on); it needs no lease, and the holder alone can commit."""
        check_key(key)
        if not isinstance(attempt, str) or not ATTEMPT_RE.match(attempt) or not SEGMENT_RE.match(attempt):
            raise StoreError(f"invalid attempt name {attempt!r} for state {key}")
        return AttemptWriter(self._layout, key, attempt=attempt)

    def open_verified(self, key: str, *, hash_files: bool = True) -> CommittedState | None:
        """The committed state ``key``, verified against its manifest; None if absent,
        quarantined or corrupt, and a corrupt one is quarantined here (a write).
        ``hash_files=False`` checks the manifest and the file sizes only, for a caller that
        reads every file next: reads check each hash as they stream."""
        check_key(key)
        try:
            return self._load_verified(key, hash_files=hash_files)
        except (AlreadyQuarantined, CorruptState):
            return None

    def open_unverified(self, key: str) -> CommittedState | None:
        """The committed state ``key`` with its manifest checked but its files not verified
        (each file is checked as it is read).

        Writes nothing (no quarantine), so read-only views such as ``rmrun status`` use it.
        """
        check_key(key)
        names = self._backend.names(self._layout.key_path(key))
        if COMMIT_NAME not in names:
            return None
        try:
            return self._load_committed(key, names)
        except NewerFormat:
            raise
        except StoreError:
            return None

    def latest(self, prefix: str, *, hash_files: bool = True) -> CommittedState | None:
        """Newest committed state under ``prefix`` that verifies, quarantining bad ones.

        ``hash_files=False``: the manifest and the file sizes are checked, the contents are
        not read; the caller's read of the files checks their hashes, and on a mismatch
        (CorruptState) quarantines the state and asks again.
        """
        check_prefix(prefix)
        rejected = []
        for key in reversed(self._layout.key_names(prefix)):
            try:
                state = self._load_verified(key, hash_files=hash_files)
            except (AlreadyQuarantined, CorruptState) as exc:
                rejected.append(f"{key} ({exc})")
                continue
            if state is not None:
                return state
        if rejected:
            raise NoValidState(
                f"no valid state under prefix {prefix!r} in {self.root}; "
                f"{len(rejected)} committed, none verifies: " + "; ".join(rejected)
            )
        return None

    def committed_keys(self, prefix: str) -> list[str]:
        """Committed, non-quarantined keys under ``prefix``, oldest first (not verified)."""
        check_prefix(prefix)
        keys = []
        for key in self._layout.key_names(prefix):
            names = self._backend.names(self._layout.key_path(key))
            if COMMIT_NAME not in names:
                continue
            if any(n.startswith(QUARANTINE_PREFIX) for n in names):
                attempt = committed_attempt(self._layout, key)
                if attempt is None or quarantine_name(attempt) in names:
                    continue
            keys.append(key)
        return keys

    def check_formats(self) -> None:
        """Raise NewerFormat if any committed state (its COMMIT or manifest) was written in a
        newer layout than this rmrun reads. Reads only: run before the first write of a start,
        so that an older rmrun changes nothing in a newer one's state."""
        from concurrent.futures import ThreadPoolExecutor

        keys = self._layout.key_names("")

        def check(key: str) -> None:
            try:
                commit = read_commit(self._layout, key)
            except CorruptState:
                return  # judged (and quarantined) when the run reads it, as before
            if commit is not None:
                try:
                    raw = self._backend.read(self._layout.manifest_path(key, commit["attempt"]))
                    found = json.loads(raw).get("format")
                except (FileNotFoundError, ValueError, AttributeError):
                    return
                check_format(found, what=f"state {key} (its MANIFEST.json)")

        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="rmrun-format") as pool:
            for _ in pool.map(check, keys):
                pass

    def set_aside(self, key: str, *, lease: Lease) -> str:
        """Move state ``key`` (all its attempts and quarantine notes) out of ``states/`` to
        ``quarantined/<key>.<time>/``, where nothing reads or deletes it, and return that
        location: a replaced state is kept for a human, never deleted."""
        check_key(key)
        self.check_lease(lease)
        stamp = utc_now().replace(":", "").replace("+", "Z").replace("-", "")
        target = self._backend.path(SET_ASIDE_DIR, f"{key}.{stamp}")
        self._backend.move_tree(self._layout.key_path(key), target)
        return posixpath.join(self.root, SET_ASIDE_DIR, f"{key}.{stamp}")

    def delete(self, key: str, *, lease: Lease) -> None:
        """Delete state ``key``: COMMIT first, then the data (quarantine notes included)."""
        check_key(key)
        self.check_lease(lease)
        key_path = self._layout.key_path(key)
        self._backend.remove_file(self._layout.commit_path(key))
        self._backend.remove_tree(key_path)

    def retain(self, prefix: str, *, keep: int, lease: Lease) -> list[str]:
        """Delete all but the newest ``keep`` committed states under ``prefix``; return deleted keys."""
        if not isinstance(keep, int) or keep < 0:
            raise StoreError(f"keep must be a non-negative int, got {keep!r}")
        self.check_lease(lease)
        keys = self.committed_keys(prefix)
        doomed = keys[: max(0, len(keys) - keep)]
        for key in doomed:
            self.delete(key, lease=lease)
        return doomed

    def clean_staging(self, *, lease: Lease) -> int:
        """Remove attempts that are neither committed nor the current lease's; return how many."""
        self.check_lease(lease)
        removed = 0
        for key in self._layout.key_names(""):
            removed += self._clean_key(key, lease=lease)
        return removed

    def quarantine(self, key: str, *, reason: str, lease: Lease) -> None:
        """Mark the committed attempt of ``key`` as never to be used again (a state that
        verifies but does not load is as corrupt as one that fails its hashes)."""
        check_key(key)
        self.check_lease(lease)
        attempt = committed_attempt(self._layout, key)
        if attempt is not None:
            self._quarantine(key, attempt, f"state {key} ({attempt}): {reason}")

    def quarantined(self, key: str | None = None) -> list[dict]:
        """Every quarantine note (of ``key`` alone if given: one listing, not one per key):
        [{key, attempt, reason, time}], sorted by key and attempt."""
        if key is not None:
            check_key(key)
        notes = []
        for each in [key] if key is not None else self._layout.key_names(""):
            key_path = self._layout.key_path(each)
            for name in self._backend.names(key_path):
                if name.startswith(QUARANTINE_PREFIX) and name.endswith(".json"):
                    notes.append(self._read_quarantine_note(each, name))
        return notes

    # ----------------------------------------------------------------- records

    def write_record(self, name: str, data: dict, *, lease: Lease) -> None:
        """Write record ``name`` (last writer wins) after checking the lease."""
        check_record_name(name)
        payload = json_bytes(json_copy(data, what=f"record {name}"))
        self.check_lease(lease)
        self._backend.write_atomic(self._layout.record_path(name), payload)

    def read_record(self, name: str) -> dict | None:
        """Record ``name``, or None if it was never written."""
        check_record_name(name)
        try:
            raw = self._backend.read(self._layout.record_path(name))
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise StoreError(f"record {name} in {self.root} is not valid JSON") from None

    def read_records(self, prefix: str = "") -> dict[str, dict]:
        """{name: data} of every record whose name starts with ``prefix``."""
        out = {}
        for rel in sorted(self._backend.sizes(self._backend.path(RECORDS_DIR))):
            if not rel.endswith(".json") or posixpath.basename(rel).startswith("."):
                continue
            name = rel[: -len(".json")]
            if name.startswith(prefix):
                record = self.read_record(name)
                if record is not None:
                    out[name] = record
        return out

    # ----------------------------------------------------------------- internals

    def _load_verified(self, key: str, *, hash_files: bool) -> CommittedState | None:
        """Load and verify ``key``; quarantine it on corruption (then re-raise)."""
        names = self._backend.names(self._layout.key_path(key))
        if COMMIT_NAME not in names:
            return None
        try:
            state = self._load_committed(key, names)
            if state is not None and hash_files:
                state.verify()
            elif state is not None:
                state.verify_sizes()
            return state
        except CorruptState as exc:
            self._quarantine(key, exc.attempt, str(exc))
            raise

    def _load_committed(self, key: str, names: list[str]) -> CommittedState | None:
        """The CommittedState named by COMMIT, with its manifest checked (files not yet)."""
        commit = read_commit(self._layout, key)
        if commit is None:
            return None
        attempt = commit["attempt"]
        if quarantine_name(attempt) in names:
            note = self._read_quarantine_note(key, quarantine_name(attempt))
            raise AlreadyQuarantined(f"quarantined: {note['reason']}")
        manifest = read_manifest(self._layout, key, attempt, expected_sha256=commit["manifest_sha256"])
        return CommittedState(self._layout, key, attempt=attempt, manifest=manifest)

    def _quarantine(self, key: str, attempt: str, reason: str) -> None:
        """Record that ``attempt`` of ``key`` must never be used again."""
        note = {"key": key, "attempt": attempt, "reason": reason, "time": utc_now()}
        self._backend.write_atomic(self._layout.quarantine_path(key, attempt), json_bytes(note))

    def _read_quarantine_note(self, key: str, name: str) -> dict:
        """A quarantine note, tolerating an unreadable one."""
        attempt = name[len(QUARANTINE_PREFIX) : -len(".json")]
        try:
            note = json.loads(self._backend.read(posixpath.join(self._layout.key_path(key), name)))
        except (FileNotFoundError, ValueError):
            note = {}
        return {
            "key": key,
            "attempt": note.get("attempt", attempt),
            "reason": note.get("reason", "unreadable quarantine note"),
            "time": note.get("time"),
        }

    def _clean_key(self, key: str, *, lease: Lease) -> int:
        """Remove garbage attempts of one key; drop the key folder if nothing is left."""
        key_path = self._layout.key_path(key)
        names = self._backend.names(key_path)
        committed = committed_attempt(self._layout, key) if COMMIT_NAME in names else None
        removed, kept_any = 0, committed is not None
        for name in names:
            if name == COMMIT_NAME or name.startswith(QUARANTINE_PREFIX) or name == committed:
                continue
            if attempt_generation(name) == lease.generation:
                kept_any = True  # the current lease may still be writing it
                continue
            self._backend.remove_tree(posixpath.join(key_path, name))
            removed += 1
        if not kept_any:
            self._backend.remove_tree(key_path)  # only orphaned quarantine notes can remain
        return removed
