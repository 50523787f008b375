"""States: staging an attempt, committing it, and reading a committed one back verified.

A :class:`StagedState` writes the files of one attempt (or takes the entries an
:class:`AttemptWriter` in another process uploaded), then ``commit()`` writes the
manifest, checks the lease and creates ``COMMIT`` create-only. A :class:`CommittedState`
checks every file it reads against the manifest; the functions at the bottom read and
check ``COMMIT`` and the manifest themselves.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import posixpath
import secrets
from collections.abc import Callable, Iterable

from rmrun.store.backends import SymlinkRefused
from rmrun.store.errors import CorruptState, StoreError
from rmrun.store.layout import (
    FORMAT_VERSION,
    INVALID_COMMIT,
    MANIFEST_NAME,
    SEGMENT_RE,
    Layout,
    check_file_name,
    check_format,
    json_bytes,
    json_copy,
    sha256,
    utc_now,
)
from rmrun.store.lease import Lease, Leases
from rmrun.store.streams import copy_hashing, read_chunks

GET_THREADS = 8  # files of one state downloaded at once


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


class AttemptWriter:
    """Uploads files into an attempt the lease holder staged, from a process without the lease.

    It can only write files under that attempt and say what it wrote; the entries it
    returns go to the holder, whose :meth:`StagedState.add_files` takes them into the
    manifest. Nothing it writes is visible unless the holder commits.
    """

    def __init__(self, layout: Layout, key: str, *, attempt: str):
        self.key = key
        self.attempt = attempt
        self._layout = layout

    def __repr__(self) -> str:
        return f"AttemptWriter(key={self.key!r}, attempt={self.attempt!r})"

    def put_files(self, files: dict[str, str]) -> list[dict]:
        """Upload ``{name: local path}`` concurrently; return their manifest entries
        ({path, size, sha256}), sorted by name."""
        names = sorted(files)
        for name in names:
            check_file_name(name)
        attempt_dir = self._layout.attempt_path(self.key, self.attempt)
        pairs = [(files[name], posixpath.join(attempt_dir, name)) for name in names]
        results = self._layout.backend.put_files(pairs)
        return [{"path": name, "size": size, "sha256": sha} for name, (size, sha) in zip(names, results)]


class StagedState:
    """Files being written for one key; invisible to readers until commit()."""

    def __init__(self, layout: Layout, leases: Leases, key: str, *, attempt: str, lease: Lease, meta: dict):
        self.key = key
        self.attempt = attempt
        self._layout = layout
        self._leases = leases
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
            self._write(name, read_chunks(f))

    def put_dir(self, local_dir: str, *, prefix: str = "") -> None:
        """Upload every file under ``local_dir`` as ``<prefix>/<relative path>``."""
        for rel in _local_files(local_dir):
            name = posixpath.join(prefix.strip("/"), rel) if prefix.strip("/") else rel
            self.put_file(name, os.path.join(local_dir, *rel.split("/")))

    def put_files(self, files: dict[str, str]) -> None:
        """Upload ``{name: local path}`` concurrently (see :class:`AttemptWriter`)."""
        self._ensure_open()
        self.add_files(AttemptWriter(self._layout, self.key, attempt=self.attempt).put_files(files))

    def add_files(self, entries: list[dict]) -> None:
        """Take files another writer uploaded into this attempt into the manifest;
        commit() checks that each is there at its size."""
        self._ensure_open()
        for entry in entries:
            try:
                name, size, sha = entry["path"], entry["size"], entry["sha256"]
            except (KeyError, TypeError):
                raise StoreError(f"invalid file entry {entry!r} for staged state {self.key}") from None
            check_file_name(name)
            if not isinstance(size, int) or not isinstance(sha, str):
                raise StoreError(f"invalid file entry {entry!r} for staged state {self.key}")
            self._claim(name)
            self._files[name] = {"path": name, "size": size, "sha256": sha}

    def commit(self, *, meta: dict | None = None) -> CommittedState:
        """Check every file is there, write MANIFEST.json (with ``meta`` added to the
        staging meta), check the lease, then publish COMMIT create-only."""
        self._ensure_open()
        if meta:
            self._meta = {**self._meta, **json_copy(meta, what="state meta")}
        layout, backend = self._layout, self._layout.backend
        attempt_dir = layout.attempt_path(self.key, self.attempt)
        backend.sync_tree(attempt_dir)
        self._check_uploaded(backend.sizes(attempt_dir))
        manifest = self._manifest()
        manifest_bytes = json_bytes(manifest)
        backend.write_atomic(posixpath.join(attempt_dir, MANIFEST_NAME), manifest_bytes)
        try:
            self._leases.check(self._lease)
            publish(layout, self.key, self.attempt, sha256(manifest_bytes), lease=self._lease)
        except StoreError:
            self._closed = True
            raise
        self._closed = True
        return CommittedState(layout, self.key, attempt=self.attempt, manifest=manifest)

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
        check_file_name(name)
        self._claim(name)
        path = posixpath.join(self._layout.attempt_path(self.key, self.attempt), name)
        size, sha = self._layout.backend.write_stream(path, chunks)
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
            "time": utc_now(),
            "meta": self._meta,
            "files": [self._files[name] for name in sorted(self._files)],
        }

    def _ensure_open(self) -> None:
        """Refuse use after commit (or after a failed publish)."""
        if self._closed:
            raise StoreError(f"staged state {self.key} ({self.attempt}) is closed")


class CommittedState:
    """A published, immutable state; reads check sizes and hashes against the manifest."""

    def __init__(self, layout: Layout, key: str, *, attempt: str, manifest: dict):
        self.key = key
        self.attempt = attempt
        self.manifest = manifest
        self._layout = layout
        self._entries = {entry["path"]: entry for entry in manifest["files"]}
        self.files = sorted(self._entries)

    def __repr__(self) -> str:
        return f"CommittedState(key={self.key!r}, attempt={self.attempt!r}, files={len(self.files)})"

    def read_bytes(self, name: str) -> bytes:
        """Content of file ``name``, checked against the manifest."""
        entry = self._entry(name)
        try:
            data = self._layout.backend.read(self._path(name))
        except SymlinkRefused:
            raise self._corrupt(f"file {name} is a symbolic link; links are never followed") from None
        except FileNotFoundError:
            raise self._corrupt(f"missing file {name}") from None
        self._check_content(entry, len(data), sha256(data))
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
        relative = {name: _under_prefix(name, prefix) for name in self.files}
        selected = {name: rel for name, rel in relative.items() if rel}
        if prefix.strip("/") and not selected:
            raise StoreError(f"state {self.key} has no files under {prefix!r}")
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(GET_THREADS, max(1, len(selected)))) as pool:
            pending = [
                pool.submit(self.get_file, name, os.path.join(local_dir, *rel.split("/")))
                for name, rel in selected.items()
            ]
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
        sizes = self._layout.backend.sizes(self._layout.attempt_path(self.key, self.attempt))
        for name in self.files:
            if name not in sizes:
                raise self._corrupt(f"missing file {name}")
            expected = self._entries[name]["size"]
            if sizes[name] != expected:
                raise self._corrupt(f"size mismatch for {name}: manifest {expected}, found {sizes[name]}")

    def stamps(self) -> dict[str, str | None]:
        """{file: a stamp that changes whenever the stored file may have been written again}
        (size, mtime and inode on local disk; the object store's ETag or the like), one
        listing; None for a file the store gives no reliable stamp for."""
        found = self._layout.backend.stamps(self._layout.attempt_path(self.key, self.attempt))
        return {name: found.get(name) for name in self.files}

    def _entry(self, name: str) -> dict:
        """Manifest entry of ``name``."""
        if name not in self._entries:
            raise StoreError(f"state {self.key} has no file {name!r}")
        return self._entries[name]

    def _path(self, name: str) -> str:
        """Backend path of file ``name``."""
        return posixpath.join(self._layout.attempt_path(self.key, self.attempt), name)

    def _stream(self, name: str, write: Callable[[bytes], object]) -> tuple[int, str]:
        """Read file ``name`` in chunks through ``write``; return (size, sha256)."""
        try:
            with self._layout.backend.open_read(self._path(name)) as f:
                return copy_hashing(read_chunks(f), write)
        except SymlinkRefused:
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


# --------------------------------------------------------------------------- COMMIT and the manifest


def publish(layout: Layout, key: str, attempt: str, manifest_sha256: str, *, lease: Lease) -> None:
    """Create states/<key>/COMMIT naming ``attempt``; StoreError if the key is taken."""
    record = {
        "format": FORMAT_VERSION,
        "key": key,
        "attempt": attempt,
        "manifest_sha256": manifest_sha256,
        "generation": lease.generation,
        "run_id": lease.run_id,
        "time": utc_now(),
    }
    try:
        layout.backend.create(layout.commit_path(key), json_bytes(record))
    except FileExistsError:
        if committed_attempt(layout, key) != attempt:  # not our own retried PUT
            raise StoreError(f"state {key} already committed by another writer") from None


def read_commit(layout: Layout, key: str) -> dict | None:
    """COMMIT record of ``key``; None if absent; CorruptState if unreadable."""
    try:
        raw = layout.backend.read(layout.commit_path(key))
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
        check_format(record.get("format"), what=f"state {key} (its COMMIT)")
        attempt = record["attempt"]
        record["manifest_sha256"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptState(f"state {key}: COMMIT is not valid", attempt=INVALID_COMMIT) from None
    if not isinstance(attempt, str) or not SEGMENT_RE.match(attempt):
        raise CorruptState(f"state {key}: COMMIT names invalid attempt {attempt!r}", attempt=INVALID_COMMIT)
    return record


def committed_attempt(layout: Layout, key: str) -> str | None:
    """Attempt named by COMMIT (INVALID_COMMIT if unreadable), None if not committed."""
    try:
        record = read_commit(layout, key)
    except CorruptState:
        return INVALID_COMMIT
    return record["attempt"] if record else None


def read_manifest(layout: Layout, key: str, attempt: str, *, expected_sha256: str) -> dict:
    """Manifest of ``attempt``, checked against COMMIT's hash and its own key/attempt."""

    def corrupt(reason: str) -> CorruptState:
        return CorruptState(f"state {key} ({attempt}): {reason}", attempt=attempt, reason=reason)

    try:
        raw = layout.backend.read(layout.manifest_path(key, attempt))
    except FileNotFoundError:
        raise corrupt("missing MANIFEST.json") from None
    try:  # a newer layout is refused before anything calls it corrupt
        found = json.loads(raw).get("format")
    except (ValueError, AttributeError):
        found = None
    check_format(found, what=f"state {key} (its MANIFEST.json)")
    if sha256(raw) != expected_sha256:
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
