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

This module imports only the standard library and fsspec.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import errno
import fcntl
import hashlib
import inspect
import json
import os
import posixpath
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import fsspec

__all__ = [
    "AttemptWriter",
    "CommittedState",
    "CorruptState",
    "Lease",
    "LeaseLost",
    "NoValidState",
    "StagedState",
    "StateStore",
    "StoreError",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
COMMIT_NAME = "COMMIT"
QUARANTINE_PREFIX = "QUARANTINE-"
LOCK_NAME = "lease.lock"
CHUNK_SIZE = 8 * 2**20
GET_THREADS = 8  # files of one state downloaded at once
UPLOAD_THREADS = 8  # files one writer uploads at a time where the backend has no batched put
INVALID_COMMIT = "invalid-commit"  # attempt label used to quarantine an unreadable COMMIT

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}\Z")
_LEASE_FILE_RE = re.compile(r"(\d{12})\.json\Z")
_ATTEMPT_GENERATION_RE = re.compile(r"g(\d+)-")
_ATTEMPT_RE = re.compile(r"g\d{6,}-[A-Za-z0-9._-]+\Z")
_LOCAL_PROTOCOLS = ("file", "local")
_BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
# Serialises check-then-write "create-only" on backends without a native primitive.
_CREATE_LOCK = threading.Lock()


class StoreError(RuntimeError):
    """A state store operation failed; the message is one line."""


class LeaseLost(StoreError):
    """The caller's lease was superseded by a newer generation (fencing)."""


class NoValidState(StoreError):
    """Committed states exist under a prefix but none of them verifies."""


class CorruptState(StoreError):
    """A committed state failed verification: ``attempt`` is the one to quarantine,
    ``reason`` says why without the leading "state <key> (<attempt>): "."""

    def __init__(self, message: str, *, attempt: str, reason: str | None = None):
        super().__init__(message)
        self.attempt = attempt
        self.reason = reason if reason is not None else message


class _AlreadyQuarantined(StoreError):
    """The committed attempt of a key was quarantined earlier."""


@dataclass(frozen=True)
class Lease:
    """Right to write a store root, valid until a newer generation is acquired."""

    generation: int
    holder: str
    run_id: str


# --------------------------------------------------------------------------- helpers


def _utc_now() -> str:
    """Current UTC time as an ISO-8601 string."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _json_bytes(obj: object) -> bytes:
    """Deterministic, human-readable JSON encoding used for every stored document."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _json_copy(obj: dict, *, what: str) -> dict:
    """Return a JSON round-tripped copy of ``obj`` or raise a one-line StoreError."""
    if not isinstance(obj, dict):
        raise StoreError(f"{what} must be a dict, got {type(obj).__name__}")
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-serialisable: {exc}") from None


def _sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _copy_hashing(chunks: Iterable[bytes], write: Callable[[bytes], object]) -> tuple[int, str]:
    """Pass every chunk to ``write``; return (total size, hex sha256)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        write(chunk)
    return size, digest.hexdigest()


def _hash_local_file(path: str) -> tuple[int, str]:
    """(size, hex sha256) of a local file."""
    with open(path, "rb") as f:
        return _copy_hashing(_read_chunks(f), lambda chunk: None)


def _upload_in_threads(write_stream, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Stream each (local path, backend path) through ``write_stream``, a few at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def upload(pair: tuple[str, str]) -> tuple[int, str]:
        with open(pair[0], "rb") as f:
            return write_stream(pair[1], _read_chunks(f))

    if len(pairs) <= 1:
        return [upload(pair) for pair in pairs]
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(pairs)), thread_name_prefix="rmrun-upload") as pool:
        return list(pool.map(upload, pairs))


def _read_chunks(fileobj) -> Iterator[bytes]:
    """Iterate over a binary file in CHUNK_SIZE pieces."""
    return iter(lambda: fileobj.read(CHUNK_SIZE), b"")


def _new_run_id() -> str:
    """A path-safe, unique-enough identifier of one lease acquisition."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _attempt_generation(attempt: str) -> int | None:
    """Lease generation encoded in an attempt name, or None if it has none."""
    match = _ATTEMPT_GENERATION_RE.match(attempt)
    return int(match.group(1)) if match else None


def _check_key(key: str) -> None:
    """Reject state keys that are not a single safe path segment."""
    if not isinstance(key, str) or not _SEGMENT_RE.match(key):
        raise StoreError(
            f"invalid state key {key!r}: use letters, digits, '.', '_', '-' (no '/'), "
            "starting with a letter, digit or '_'"
        )


def _check_prefix(prefix: str) -> None:
    """Reject key prefixes that could never match a key."""
    if not isinstance(prefix, str) or "/" in prefix:
        raise StoreError(f"invalid state key prefix {prefix!r}: keys contain no '/'")


def _check_record_name(name: str) -> None:
    """Record names are '/'-separated safe segments."""
    if not isinstance(name, str) or not all(_SEGMENT_RE.match(part) for part in name.split("/")):
        raise StoreError(
            f"invalid record name {name!r}: use '/'-separated letters, digits, '.', '_', '-'"
        )


def _check_file_name(name: str) -> None:
    """File names in a state are relative POSIX paths without '.'/'..' or empty parts."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if any(part in ("", ".", "..") or "\x00" in part for part in parts):
        raise StoreError(f"invalid file name {name!r}: must be a relative path without '.' or '..'")
    if name == MANIFEST_NAME:
        raise StoreError(f"invalid file name {name!r}: reserved for the manifest")


def _local_files(local_dir: str) -> list[str]:
    """Relative '/'-separated paths of every regular file under ``local_dir``, sorted."""
    if not os.path.isdir(local_dir):
        raise StoreError(f"not a directory: {local_dir}")
    found = []
    for dirpath, dirnames, filenames in os.walk(local_dir):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, local_dir)
        for filename in filenames:
            if os.path.isfile(os.path.join(dirpath, filename)):
                rel = filename if rel_dir == "." else os.path.join(rel_dir, filename)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def _under_prefix(name: str, prefix: str) -> str | None:
    """Path of ``name`` relative to folder ``prefix`` ('' = everything), or None if outside."""
    folder = prefix.strip("/")
    if not folder:
        return name
    return name[len(folder) + 1 :] if name.startswith(folder + "/") else None


def _is_local_url(root: str) -> bool:
    """True for plain paths and file:// URLs."""
    return "://" not in root or root.split("://", 1)[0] in _LOCAL_PROTOCOLS


def _normalise_root(root: str) -> str:
    """Absolute path for local roots, URL without trailing '/' for the rest."""
    if not isinstance(root, str):
        raise StoreError(f"state store root must be a str URL, got {type(root).__name__}")
    if not root.strip():
        raise StoreError("state store root is empty")
    if _is_local_url(root):
        path = root.split("://", 1)[1] if "://" in root else root
        return os.path.abspath(os.path.expanduser(path or "/"))
    protocol, rest = root.split("://", 1)
    if not rest.strip("/"):
        raise StoreError(f"state store root {root!r} names no location")
    return f"{protocol}://{rest.rstrip('/')}"


# --------------------------------------------------------------------------- backends


class _SymlinkRefused(FileNotFoundError):
    """A local state file (or a folder on its way) is a symbolic link."""


class _LocalBackend:
    """Local filesystem I/O with fsync where durability matters and os.link for create-only.

    Reads never follow a symbolic link below the root: a state whose files point
    elsewhere (out of the state directory) is treated as corrupt.
    """

    local = True

    def __init__(self, base: str):
        self.base = base

    def _refuse_links(self, path: str) -> None:
        """Raise _SymlinkRefused if ``path`` or a folder between it and the root is a link."""
        rel = os.path.relpath(path, self.base)
        if rel.startswith(".."):
            return
        current = self.base
        for part in rel.split(os.sep):
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise _SymlinkRefused(f"{current} is a symbolic link")

    def path(self, *parts: str) -> str:
        """Filesystem path of ``parts`` under the root."""
        return posixpath.join(self.base, *parts)

    def names(self, path: str) -> list[str]:
        """Sorted entry names of a directory; [] if it does not exist."""
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, path: str) -> bytes:
        """Whole content of a file (FileNotFoundError if missing)."""
        self._refuse_links(path)
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str):
        """Binary reader of a file."""
        self._refuse_links(path)
        return open(path, "rb")

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write chunks to ``path`` and fsync it; return (size, sha256)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            result = _copy_hashing(chunks, f.write)
            f.flush()
            os.fsync(f.fileno())
        return result

    def put_files(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
        """Copy (local path, backend path) pairs, several at a time; (size, sha256) of each."""
        return _upload_in_threads(self.write_stream, pairs)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` atomically and durably (temp file, fsync, rename, fsync dirs)."""
        temp = self._temp_path(path)
        try:
            self.write_stream(temp, [data])
            os.replace(temp, path)
        finally:
            self._unlink_quietly(temp)
        self._fsync_parents(path)

    def create(self, path: str, data: bytes) -> None:
        """Create ``path`` with ``data``; FileExistsError if it already exists (os.link is atomic)."""
        temp = self._temp_path(path)
        try:
            self.write_stream(temp, [data])
            os.link(temp, path)
        finally:
            self._unlink_quietly(temp)
        self._fsync_parents(path)

    def sizes(self, path: str) -> dict[str, int]:
        """{relative '/' path: size} of every file under directory ``path``."""
        out = {}
        for dirpath, _, filenames in os.walk(path):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                out[rel] = os.path.getsize(full)
        return out

    def sync_tree(self, path: str) -> None:
        """fsync every directory under ``path`` and its parents up to the root."""
        for dirpath, _, _ in os.walk(path):
            self._fsync_dir(dirpath)
        self._fsync_parents(path)

    def remove_file(self, path: str) -> None:
        """Delete a file durably; missing is fine."""
        self._unlink_quietly(path)
        self._fsync_dir(os.path.dirname(path))

    def remove_tree(self, path: str) -> None:
        """Delete a directory tree (or a stray file); missing is fine."""
        if not os.path.isdir(path) or os.path.islink(path):
            self._unlink_quietly(path)
            return
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass

    @staticmethod
    def _temp_path(path: str) -> str:
        """Hidden temp name next to ``path``."""
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, f".{name}.tmp-{secrets.token_hex(4)}")

    @staticmethod
    def _unlink_quietly(path: str) -> None:
        """Remove a file if present."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    @staticmethod
    def _fsync_dir(path: str) -> None:
        """fsync a directory so that entries created or removed in it are durable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fsync_parents(self, path: str) -> None:
        """fsync the directories from ``path``'s parent up to the store root."""
        directory = os.path.dirname(path)
        while True:
            self._fsync_dir(directory)
            if directory == self.base or len(directory) <= len(self.base):
                return
            directory = os.path.dirname(directory)


class _FsspecBackend:
    """Any fsspec filesystem; create-only is native on s3, check-then-write elsewhere."""

    local = False

    def __init__(self, fs, base: str):
        self.fs = fs
        self.base = base
        self.native_create = _has_native_create(fs)

    def path(self, *parts: str) -> str:
        """Protocol-less filesystem path of ``parts`` under the root."""
        return posixpath.join(self.base, *parts)

    def names(self, path: str) -> list[str]:
        """Sorted entry names of a directory; [] if it does not exist."""
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        own = path.rstrip("/")
        return sorted({posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != own})

    def read(self, path: str) -> bytes:
        """Whole content of a file (FileNotFoundError if missing)."""
        return self.fs.cat_file(path)

    def open_read(self, path: str):
        """Binary reader of a file."""
        return self.fs.open(path, "rb")

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Stream chunks to ``path`` (multipart on s3); return (size, sha256)."""
        with self.fs.open(path, "wb") as f:
            return _copy_hashing(chunks, f.write)

    def put_files(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
        """Upload (local path, backend path) pairs concurrently: one batched ``put`` on an
        asynchronous filesystem (s3, gcs...), a few threads elsewhere; (size, sha256) of each.
        The batched path hashes the local files first; commit() checks the sizes that arrived."""
        if not getattr(self.fs, "async_impl", False) or len(pairs) <= 1:
            return _upload_in_threads(self.write_stream, pairs)
        hashes = [_hash_local_file(local) for local, _ in pairs]
        self.fs.put([local for local, _ in pairs], [remote for _, remote in pairs])
        return hashes

    def write_atomic(self, path: str, data: bytes) -> None:
        """Overwrite ``path``; a single PUT is atomic on object stores."""
        self.fs.pipe_file(path, data)

    def create(self, path: str, data: bytes) -> None:
        """Create ``path`` with ``data``; FileExistsError if it already exists."""
        if self.native_create:
            # s3fs sends `If-None-Match: *`; S3 (and moto) answer 412, which
            # s3fs translates into FileExistsError.
            self.fs.pipe_file(path, data, mode="create")
            return
        # Best effort: atomic only against writers in this process.
        with _CREATE_LOCK:
            self.fs.invalidate_cache(path)
            if self.fs.exists(path):
                raise FileExistsError(path)
            self.fs.pipe_file(path, data)

    def sizes(self, path: str) -> dict[str, int]:
        """{relative '/' path: size} of every file under directory ``path``."""
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = path.rstrip("/") + "/"
        return {
            name[len(prefix) :]: int(info.get("size") or 0)
            for name, info in found.items()
            if name.startswith(prefix) and info.get("type") != "directory"
        }

    def sync_tree(self, path: str) -> None:
        """Nothing to do: object stores are durable once a PUT returns."""

    def remove_file(self, path: str) -> None:
        """Delete a file; missing is fine."""
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def remove_tree(self, path: str) -> None:
        """Delete everything under ``path``; missing is fine."""
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)


def _has_native_create(fs) -> bool:
    """True if ``fs`` performs a server-side create-only write (s3fs ``mode="create"``)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "s3" not in protocols:
        return False
    pipe = getattr(fs, "_pipe_file", None)
    return pipe is not None and "mode" in inspect.signature(pipe).parameters


def _make_backend(root: str, storage_options: dict):
    """Backend for a normalised root."""
    if _is_local_url(root):
        return _LocalBackend(root)
    options = dict(storage_options)
    # Other processes write the same root: never answer from a stale listing cache.
    options.setdefault("use_listings_cache", False)
    fs, base = fsspec.core.url_to_fs(root, **options)
    return _FsspecBackend(fs, base.rstrip("/"))


# --------------------------------------------------------------------------- states


class AttemptWriter:
    """Uploads files into an attempt the lease holder staged, from a process without the lease.

    It can only write files under that attempt and say what it wrote; the entries it
    returns go to the holder, whose :meth:`StagedState.add_files` takes them into the
    manifest. Nothing it writes is visible unless the holder commits.
    """

    def __init__(self, store: "StateStore", key: str, *, attempt: str):
        self.key = key
        self.attempt = attempt
        self._store = store

    def __repr__(self) -> str:
        return f"AttemptWriter(key={self.key!r}, attempt={self.attempt!r})"

    def put_files(self, files: dict[str, str]) -> list[dict]:
        """Upload ``{name: local path}`` concurrently; return their manifest entries
        ({path, size, sha256}), sorted by name."""
        names = sorted(files)
        for name in names:
            _check_file_name(name)
        attempt_dir = self._store._attempt_path(self.key, self.attempt)
        pairs = [(files[name], posixpath.join(attempt_dir, name)) for name in names]
        results = self._store._backend.put_files(pairs)
        return [{"path": name, "size": size, "sha256": sha} for name, (size, sha) in zip(names, results)]


class StagedState:
    """Files being written for one key; invisible to readers until commit()."""

    def __init__(self, store: "StateStore", key: str, *, attempt: str, lease: Lease, meta: dict):
        self.key = key
        self.attempt = attempt
        self._store = store
        self._lease = lease
        self._meta = meta
        self._files: dict[str, dict] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"StagedState(key={self.key!r}, attempt={self.attempt!r})"

    def write_bytes(self, name: str, data: bytes) -> None:
        """Store ``data`` as file ``name`` of this state."""
        self._write(name, [bytes(data)])

    def put_file(self, name: str, local_path: str) -> None:
        """Upload a local file as ``name``, streamed and hashed while reading."""
        with open(local_path, "rb") as f:
            self._write(name, _read_chunks(f))

    def put_dir(self, local_dir: str, *, prefix: str = "") -> None:
        """Upload every file under ``local_dir`` as ``<prefix>/<relative path>``."""
        for rel in _local_files(local_dir):
            name = posixpath.join(prefix.strip("/"), rel) if prefix.strip("/") else rel
            self.put_file(name, os.path.join(local_dir, *rel.split("/")))

    def put_files(self, files: dict[str, str]) -> None:
        """Upload ``{name: local path}`` concurrently (see :class:`AttemptWriter`)."""
        self._ensure_open()
        self.add_files(AttemptWriter(self._store, self.key, attempt=self.attempt).put_files(files))

    def add_files(self, entries: list[dict]) -> None:
        """Take files another writer uploaded into this attempt into the manifest;
        commit() checks that each is there at its size."""
        self._ensure_open()
        for entry in entries:
            try:
                name, size, sha = entry["path"], entry["size"], entry["sha256"]
            except (KeyError, TypeError):
                raise StoreError(f"invalid file entry {entry!r} for staged state {self.key}") from None
            _check_file_name(name)
            if not isinstance(size, int) or not isinstance(sha, str):
                raise StoreError(f"invalid file entry {entry!r} for staged state {self.key}")
            self._claim(name)
            self._files[name] = {"path": name, "size": size, "sha256": sha}

    def commit(self, *, meta: dict | None = None) -> "CommittedState":
        """Check every file is there, write MANIFEST.json (with ``meta`` added to the
        staging meta), check the lease, then publish COMMIT create-only."""
        self._ensure_open()
        if meta:
            self._meta = {**self._meta, **_json_copy(meta, what="state meta")}
        store, backend = self._store, self._store._backend
        attempt_dir = store._attempt_path(self.key, self.attempt)
        backend.sync_tree(attempt_dir)
        self._check_uploaded(backend.sizes(attempt_dir))
        manifest = self._manifest()
        manifest_bytes = _json_bytes(manifest)
        backend.write_atomic(posixpath.join(attempt_dir, MANIFEST_NAME), manifest_bytes)
        try:
            store.check_lease(self._lease)
            store._publish(self.key, self.attempt, _sha256(manifest_bytes), lease=self._lease)
        except StoreError:
            self._closed = True
            raise
        self._closed = True
        return CommittedState(store, self.key, attempt=self.attempt, manifest=manifest)

    def _check_uploaded(self, sizes: dict[str, int]) -> None:
        """Refuse to commit an attempt where a file of the manifest is missing or cut short."""
        for name, entry in self._files.items():
            if sizes.get(name) != entry["size"]:
                found = "missing" if name not in sizes else f"{sizes[name]} bytes, not {entry['size']}"
                raise StoreError(f"staged state {self.key} ({self.attempt}): file {name} is {found}; not committed")

    def _claim(self, name: str) -> None:
        """Refuse a second file under the same name."""
        if name in self._files:
            raise StoreError(f"file {name!r} already written to staged state {self.key}")

    def _write(self, name: str, chunks: Iterable[bytes]) -> None:
        """Write one file of the attempt and remember its size and hash."""
        self._ensure_open()
        _check_file_name(name)
        self._claim(name)
        path = posixpath.join(self._store._attempt_path(self.key, self.attempt), name)
        size, sha = self._store._backend.write_stream(path, chunks)
        self._files[name] = {"path": name, "size": size, "sha256": sha}

    def _manifest(self) -> dict:
        """The manifest document of this attempt."""
        return {
            "format": FORMAT_VERSION,
            "key": self.key,
            "attempt": self.attempt,
            "generation": self._lease.generation,
            "run_id": self._lease.run_id,
            "holder": self._lease.holder,
            "time": _utc_now(),
            "meta": self._meta,
            "files": [self._files[name] for name in sorted(self._files)],
        }

    def _ensure_open(self) -> None:
        """Refuse use after commit (or after a failed publish)."""
        if self._closed:
            raise StoreError(f"staged state {self.key} ({self.attempt}) is closed")


class CommittedState:
    """A published, immutable state; reads check sizes and hashes against the manifest."""

    def __init__(self, store: "StateStore", key: str, *, attempt: str, manifest: dict):
        self.key = key
        self.attempt = attempt
        self.manifest = manifest
        self._store = store
        self._entries = {entry["path"]: entry for entry in manifest["files"]}
        self.files = sorted(self._entries)

    def __repr__(self) -> str:
        return f"CommittedState(key={self.key!r}, attempt={self.attempt!r}, files={len(self.files)})"

    def read_bytes(self, name: str) -> bytes:
        """Content of file ``name``, checked against the manifest."""
        entry = self._entry(name)
        try:
            data = self._store._backend.read(self._path(name))
        except _SymlinkRefused:
            raise self._corrupt(f"file {name} is a symbolic link; links are never followed") from None
        except FileNotFoundError:
            raise self._corrupt(f"missing file {name}") from None
        self._check_content(entry, len(data), _sha256(data))
        return data

    def get_file(self, name: str, local_path: str) -> None:
        """Download file ``name`` to ``local_path`` (atomically replaced once verified)."""
        entry = self._entry(name)
        directory = os.path.dirname(os.path.abspath(local_path))
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f".{os.path.basename(local_path)}.tmp-{secrets.token_hex(4)}")
        try:
            with open(temp, "wb") as out:
                size, sha = self._stream(name, out.write)
            self._check_content(entry, size, sha)
            os.replace(temp, local_path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    def get_dir(self, local_dir: str, *, prefix: str = "") -> None:
        """Download every file under folder ``prefix`` ('' = all) into ``local_dir``, a few
        at a time, each checked against the manifest as it streams; the first file (in
        name order) that does not match raises CorruptState."""
        selected = {name: _under_prefix(name, prefix) for name in self.files}
        selected = {name: rel for name, rel in selected.items() if rel}
        if prefix.strip("/") and not selected:
            raise StoreError(f"state {self.key} has no files under {prefix!r}")
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(GET_THREADS, max(1, len(selected)))) as pool:
            pending = [pool.submit(self.get_file, name, os.path.join(local_dir, *rel.split("/")))
                       for name, rel in selected.items()]
            for future in pending:
                future.result()

    def verify(self) -> None:
        """Raise CorruptState if a file is missing or its size or sha256 differ (reads every byte)."""
        self.verify_sizes()
        for name in self.files:
            size, sha = self._stream(name, lambda chunk: None)
            self._check_content(self._entries[name], size, sha)

    def verify_sizes(self) -> None:
        """Raise CorruptState if a file is missing or its size differs; one listing, no content
        read. The contents are checked against the manifest when they are read (get_file,
        get_dir, read_bytes)."""
        sizes = self._store._backend.sizes(self._store._attempt_path(self.key, self.attempt))
        for name in self.files:
            if name not in sizes:
                raise self._corrupt(f"missing file {name}")
            expected = self._entries[name]["size"]
            if sizes[name] != expected:
                raise self._corrupt(f"size mismatch for {name}: manifest {expected}, found {sizes[name]}")

    def _entry(self, name: str) -> dict:
        """Manifest entry of ``name``."""
        if name not in self._entries:
            raise StoreError(f"state {self.key} has no file {name!r}")
        return self._entries[name]

    def _path(self, name: str) -> str:
        """Backend path of file ``name``."""
        return posixpath.join(self._store._attempt_path(self.key, self.attempt), name)

    def _stream(self, name: str, write: Callable[[bytes], object]) -> tuple[int, str]:
        """Read file ``name`` in chunks through ``write``; return (size, sha256)."""
        try:
            with self._store._backend.open_read(self._path(name)) as f:
                return _copy_hashing(_read_chunks(f), write)
        except _SymlinkRefused:
            raise self._corrupt(f"file {name} is a symbolic link; links are never followed") from None
        except FileNotFoundError:
            raise self._corrupt(f"missing file {name}") from None

    def _check_content(self, entry: dict, size: int, sha: str) -> None:
        """Compare what was read with the manifest entry."""
        if size != entry["size"]:
            raise self._corrupt(f"size mismatch for {entry['path']}: manifest {entry['size']}, found {size}")
        if sha != entry["sha256"]:
            raise self._corrupt(f"sha256 mismatch for {entry['path']}")

    def _corrupt(self, reason: str) -> CorruptState:
        """Verification failure naming this state."""
        return CorruptState(f"state {self.key} ({self.attempt}): {reason}", attempt=self.attempt, reason=reason)


# --------------------------------------------------------------------------- the store


class StateStore:
    """States, leases and records under one root URL (see the module docstring)."""

    def __init__(self, root: str, *, storage_options: dict | None = None):
        self.root = _normalise_root(root)
        self._backend = _make_backend(self.root, dict(storage_options or {}))
        self._lock_file = None

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
        return max(self._lease_generations(), default=0)

    def check_lease(self, lease: Lease) -> None:
        """Raise LeaseLost if a newer generation than ``lease`` exists."""
        generations = self._lease_generations()
        newest = max(generations, default=0)
        if newest > lease.generation:
            holder = self._lease_holder(newest)
            raise LeaseLost(
                f"lease lost: generation {lease.generation} superseded by {newest} "
                f"(holder {holder}) on {self.root}"
            )
        if lease.generation not in generations:
            raise LeaseLost(f"lease lost: generation {lease.generation} is not recorded under {self.url('lease')}")

    def holder_alive(self) -> bool | None:
        """Local roots: whether a live process holds the lease lock; None where it cannot be told."""
        if not self._backend.local:
            return None
        if self._lock_file is not None:
            return True
        try:
            with open(os.path.join(self.root, LOCK_NAME)) as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    return True
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                return False
        except FileNotFoundError:
            return False

    def check_reachable(self) -> None:
        """Raise FileNotFoundError when the bucket of an object-store root does not exist."""
        fs = getattr(self._backend, "fs", None)
        protocols = fs.protocol if fs is not None and isinstance(fs.protocol, (tuple, list)) else (getattr(fs, "protocol", None),)
        if fs is None or not set(protocols) & _BUCKET_PROTOCOLS:
            return
        bucket = self._backend.base.split("/", 1)[0]
        if not fs.exists(bucket):
            raise FileNotFoundError(errno.ENOENT, f"no such bucket {bucket!r}", bucket)

    def release(self, lease: Lease) -> None:
        """Drop the local lock if held; lease records are kept (generations only grow)."""
        self._unlock_root()

    # ----------------------------------------------------------------- states

    def stage(self, key: str, *, lease: Lease, meta: dict) -> StagedState:
        """Start writing a new attempt for ``key``; nothing is visible until commit()."""
        _check_key(key)
        meta = _json_copy(meta, what="state meta")
        self.check_lease(lease)
        if COMMIT_NAME in self._backend.names(self._key_path(key)):
            raise StoreError(f"state {key} already committed")
        attempt = f"g{lease.generation:06d}-{lease.run_id}-{secrets.token_hex(4)}"
        return StagedState(self, key, attempt=attempt, lease=lease, meta=meta)

    def attempt_writer(self, key: str, attempt: str) -> AttemptWriter:
        """A writer of files into ``attempt`` of ``key``, staged by the lease holder (which
        passes its name on); it needs no lease, and the holder alone can commit."""
        _check_key(key)
        if not isinstance(attempt, str) or not _ATTEMPT_RE.match(attempt) or not _SEGMENT_RE.match(attempt):
            raise StoreError(f"invalid attempt name {attempt!r} for state {key}")
        return AttemptWriter(self, key, attempt=attempt)

    def get(self, key: str, *, hash_files: bool = True) -> CommittedState | None:
        """The committed, verified state ``key``; None if absent, quarantined or corrupt
        (and then quarantined). ``hash_files=False`` checks the manifest and the file sizes
        only, for a caller that reads every file next: reads check each hash as they stream."""
        _check_key(key)
        try:
            return self._load_verified(key, hash_files=hash_files)
        except (_AlreadyQuarantined, CorruptState):
            return None

    def peek(self, key: str) -> CommittedState | None:
        """The committed state ``key`` with its manifest read but its files not verified.

        Writes nothing (no quarantine), so read-only views such as ``rmrun status`` use it.
        """
        _check_key(key)
        names = self._backend.names(self._key_path(key))
        if COMMIT_NAME not in names:
            return None
        try:
            return self._load_committed(key, names)
        except StoreError:
            return None

    def latest(self, prefix: str, *, hash_files: bool = True) -> CommittedState | None:
        """Newest committed state under ``prefix`` that verifies, quarantining bad ones.

        ``hash_files=False``: the manifest and the file sizes are checked, the contents are
        not read; the caller's read of the files checks their hashes, and on a mismatch
        (CorruptState) quarantines the state and asks again.
        """
        _check_prefix(prefix)
        rejected = []
        for key in reversed(self._key_names(prefix)):
            try:
                state = self._load_verified(key, hash_files=hash_files)
            except (_AlreadyQuarantined, CorruptState) as exc:
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
        _check_prefix(prefix)
        keys = []
        for key in self._key_names(prefix):
            names = self._backend.names(self._key_path(key))
            if COMMIT_NAME not in names:
                continue
            if any(n.startswith(QUARANTINE_PREFIX) for n in names):
                attempt = self._committed_attempt(key)
                if attempt is None or self._quarantine_name(attempt) in names:
                    continue
            keys.append(key)
        return keys

    def delete(self, key: str, *, lease: Lease) -> None:
        """Delete state ``key``: COMMIT first, then the data (quarantine notes included)."""
        _check_key(key)
        self.check_lease(lease)
        key_path = self._key_path(key)
        self._backend.remove_file(posixpath.join(key_path, COMMIT_NAME))
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
        for key in self._key_names(""):
            removed += self._clean_key(key, lease=lease)
        return removed

    def quarantine(self, key: str, *, reason: str, lease: Lease) -> None:
        """Mark the committed attempt of ``key`` as never to be used again (a state that
        verifies but does not load is as corrupt as one that fails its hashes)."""
        _check_key(key)
        self.check_lease(lease)
        attempt = self._committed_attempt(key)
        if attempt is not None:
            self._quarantine(key, attempt, f"state {key} ({attempt}): {reason}")

    def quarantined(self, key: str | None = None) -> list[dict]:
        """Every quarantine note (of ``key`` alone if given: one listing, not one per key):
        [{key, attempt, reason, time}], sorted by key and attempt."""
        if key is not None:
            _check_key(key)
        notes = []
        for key in [key] if key is not None else self._key_names(""):
            key_path = self._key_path(key)
            for name in self._backend.names(key_path):
                if name.startswith(QUARANTINE_PREFIX) and name.endswith(".json"):
                    notes.append(self._read_quarantine_note(key, name))
        return notes

    # ----------------------------------------------------------------- records

    def write_record(self, name: str, data: dict, *, lease: Lease) -> None:
        """Write record ``name`` (last writer wins) after checking the lease."""
        _check_record_name(name)
        payload = _json_bytes(_json_copy(data, what=f"record {name}"))
        self.check_lease(lease)
        self._backend.write_atomic(self._record_path(name), payload)

    def read_record(self, name: str) -> dict | None:
        """Record ``name``, or None if it was never written."""
        _check_record_name(name)
        try:
            raw = self._backend.read(self._record_path(name))
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise StoreError(f"record {name} in {self.root} is not valid JSON") from None

    def read_records(self, prefix: str = "") -> dict[str, dict]:
        """{name: data} of every record whose name starts with ``prefix``."""
        out = {}
        for rel in sorted(self._backend.sizes(self._backend.path("records"))):
            if not rel.endswith(".json") or posixpath.basename(rel).startswith("."):
                continue
            name = rel[: -len(".json")]
            if name.startswith(prefix):
                record = self.read_record(name)
                if record is not None:
                    out[name] = record
        return out

    # ----------------------------------------------------------------- internals: paths

    def _key_path(self, key: str) -> str:
        return self._backend.path("states", key)

    def _attempt_path(self, key: str, attempt: str) -> str:
        return self._backend.path("states", key, attempt)

    def _record_path(self, name: str) -> str:
        return self._backend.path("records", name + ".json")

    def _lease_path(self, generation: int) -> str:
        return self._backend.path("lease", f"{generation:012d}.json")

    @staticmethod
    def _quarantine_name(attempt: str) -> str:
        return f"{QUARANTINE_PREFIX}{attempt}.json"

    def _key_names(self, prefix: str) -> list[str]:
        """Sorted names of key folders under states/ starting with ``prefix``."""
        names = self._backend.names(self._backend.path("states"))
        return [n for n in names if n.startswith(prefix) and _SEGMENT_RE.match(n)]

    # ----------------------------------------------------------------- internals: lease

    def _create_next_lease(self, holder: str) -> Lease:
        """Write lease/<max+1>.json create-only, retrying when another writer wins the race."""
        run_id = _new_run_id()
        for _ in range(100):
            generation = self.current_generation() + 1
            record = {
                "generation": generation,
                "holder": holder,
                "run_id": run_id,
                "pid": os.getpid(),
                "time": _utc_now(),
            }
            path = self._lease_path(generation)
            try:
                self._backend.create(path, _json_bytes(record))
            except FileExistsError:
                if self._lease_run_id(generation) != run_id:  # not our own retried PUT
                    continue
            return Lease(generation=generation, holder=holder, run_id=run_id)
        raise StoreError(f"could not acquire a lease on {self.root}: too many concurrent acquirers")

    def _lease_generations(self) -> set[int]:
        """Generations of every lease record."""
        names = self._backend.names(self._backend.path("lease"))
        return {int(m.group(1)) for m in map(_LEASE_FILE_RE.match, names) if m}

    def _lease_record(self, generation: int) -> dict:
        """Lease record of ``generation`` ({} if unreadable)."""
        try:
            return json.loads(self._backend.read(self._lease_path(generation)))
        except (FileNotFoundError, ValueError):
            return {}

    def _lease_holder(self, generation: int) -> str:
        return str(self._lease_record(generation).get("holder", "unknown"))

    def _lease_run_id(self, generation: int) -> str | None:
        return self._lease_record(generation).get("run_id")

    def _lock_root(self) -> bool:
        """Local roots: take a non-blocking flock on <root>/lease.lock; True if taken now."""
        if not self._backend.local or self._lock_file is not None:
            return False
        os.makedirs(self.root, exist_ok=True)
        lock_file = open(os.path.join(self.root, LOCK_NAME), "a+")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.seek(0)
            pid = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise StoreError(f"state {self.root} is in use by another process (pid {pid})") from None
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

    # ----------------------------------------------------------------- internals: states

    def _publish(self, key: str, attempt: str, manifest_sha256: str, *, lease: Lease) -> None:
        """Create states/<key>/COMMIT naming ``attempt``; StoreError if the key is taken."""
        record = {
            "format": FORMAT_VERSION,
            "key": key,
            "attempt": attempt,
            "manifest_sha256": manifest_sha256,
            "generation": lease.generation,
            "run_id": lease.run_id,
            "time": _utc_now(),
        }
        try:
            self._backend.create(posixpath.join(self._key_path(key), COMMIT_NAME), _json_bytes(record))
        except FileExistsError:
            if self._committed_attempt(key) != attempt:  # not our own retried PUT
                raise StoreError(f"state {key} already committed by another writer") from None

    def _read_commit(self, key: str) -> dict | None:
        """COMMIT record of ``key``; None if absent; CorruptState if unreadable."""
        try:
            raw = self._backend.read(posixpath.join(self._key_path(key), COMMIT_NAME))
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            attempt = record["attempt"]
            record["manifest_sha256"]
        except (ValueError, KeyError, TypeError):
            raise CorruptState(f"state {key}: COMMIT is not valid", attempt=INVALID_COMMIT) from None
        if not isinstance(attempt, str) or not _SEGMENT_RE.match(attempt):
            raise CorruptState(f"state {key}: COMMIT names invalid attempt {attempt!r}", attempt=INVALID_COMMIT)
        return record

    def _committed_attempt(self, key: str) -> str | None:
        """Attempt named by COMMIT (INVALID_COMMIT if unreadable), None if not committed."""
        try:
            record = self._read_commit(key)
        except CorruptState:
            return INVALID_COMMIT
        return record["attempt"] if record else None

    def _load_verified(self, key: str, *, hash_files: bool) -> CommittedState | None:
        """Load and verify ``key``; quarantine it on corruption (then re-raise)."""
        names = self._backend.names(self._key_path(key))
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
        commit = self._read_commit(key)
        if commit is None:
            return None
        attempt = commit["attempt"]
        if self._quarantine_name(attempt) in names:
            note = self._read_quarantine_note(key, self._quarantine_name(attempt))
            raise _AlreadyQuarantined(f"quarantined: {note['reason']}")
        manifest = self._read_manifest(key, attempt, expected_sha256=commit["manifest_sha256"])
        return CommittedState(self, key, attempt=attempt, manifest=manifest)

    def _read_manifest(self, key: str, attempt: str, *, expected_sha256: str) -> dict:
        """Manifest of ``attempt``, checked against COMMIT's hash and its own key/attempt."""

        def corrupt(reason: str) -> CorruptState:
            return CorruptState(f"state {key} ({attempt}): {reason}", attempt=attempt, reason=reason)

        try:
            raw = self._backend.read(posixpath.join(self._attempt_path(key, attempt), MANIFEST_NAME))
        except FileNotFoundError:
            raise corrupt("missing MANIFEST.json") from None
        if _sha256(raw) != expected_sha256:
            raise corrupt("MANIFEST.json does not match the sha256 in COMMIT")
        try:
            manifest = json.loads(raw)
            entries_ok = all(isinstance(e["path"], str) and isinstance(e["size"], int) for e in manifest["files"])
        except (ValueError, KeyError, TypeError):
            raise corrupt("MANIFEST.json is not valid") from None
        if not entries_ok or manifest.get("format") != FORMAT_VERSION:
            raise corrupt(f"unsupported MANIFEST.json (format {manifest.get('format')!r})")
        if manifest.get("key") != key or manifest.get("attempt") != attempt:
            raise corrupt("MANIFEST.json belongs to another state")
        return manifest

    def _quarantine(self, key: str, attempt: str, reason: str) -> None:
        """Record that ``attempt`` of ``key`` must never be used again."""
        note = {"key": key, "attempt": attempt, "reason": reason, "time": _utc_now()}
        path = posixpath.join(self._key_path(key), self._quarantine_name(attempt))
        self._backend.write_atomic(path, _json_bytes(note))

    def _read_quarantine_note(self, key: str, name: str) -> dict:
        """A quarantine note, tolerating an unreadable one."""
        attempt = name[len(QUARANTINE_PREFIX) : -len(".json")]
        try:
            note = json.loads(self._backend.read(posixpath.join(self._key_path(key), name)))
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
        key_path = self._key_path(key)
        names = self._backend.names(key_path)
        committed = self._committed_attempt(key) if COMMIT_NAME in names else None
        removed, kept_any = 0, committed is not None
        for name in names:
            if name == COMMIT_NAME or name.startswith(QUARANTINE_PREFIX) or name == committed:
                continue
            if _attempt_generation(name) == lease.generation:
                kept_any = True  # the current lease may still be writing it
                continue
            self._backend.remove_tree(posixpath.join(key_path, name))
            removed += 1
        if not kept_any:
            self._backend.remove_tree(key_path)  # only orphaned quarantine notes can remain
        return removed
