"""The storage under a store root: a local directory or any fsspec filesystem, both
behind :class:`StorageBackend`. Reads and writes stream in chunks and hash as they go;
``create`` is the one create-only write the commit protocol rests on."""

from __future__ import annotations

import inspect
import os
import posixpath
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Protocol

from rmrun.store.errors import StoreError
from rmrun.store.streams import copy_hashing, hash_local_file, remote_stamp, upload_in_threads

_LOCAL_PROTOCOLS = ("file", "local")
BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
# Serialises check-then-write "create-only" on backends without a native primitive.
_CREATE_LOCK = threading.Lock()


class StorageBackend(Protocol):
    """File I/O under one root: the only thing the store asks of a filesystem.

    Paths are the backend's own (``path()`` builds them). ``create`` must fail with
    FileExistsError when the path exists, atomically where the backend allows it.
    """

    local: bool
    base: str

    def path(self, *parts: str) -> str: ...

    def names(self, path: str) -> list[str]: ...

    def read(self, path: str) -> bytes: ...

    def open_read(self, path: str) -> IO[bytes]: ...

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]: ...

    def put_files(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]: ...

    def write_atomic(self, path: str, data: bytes) -> None: ...

    def create(self, path: str, data: bytes) -> None: ...

    def sizes(self, path: str) -> dict[str, int]: ...

    def stamps(self, path: str) -> dict[str, str | None]: ...

    def sync_tree(self, path: str) -> None: ...

    def remove_file(self, path: str) -> None: ...

    def remove_tree(self, path: str) -> None: ...

    def move_tree(self, path: str, target: str) -> None: ...


def is_local_url(root: str) -> bool:
    """True for plain paths and file:// URLs."""
    return "://" not in root or root.split("://", 1)[0] in _LOCAL_PROTOCOLS


def normalise_root(root: str) -> str:
    """Absolute path for local roots, URL without trailing '/' for the rest."""
    if not isinstance(root, str):
        raise StoreError(f"state store root must be a str URL, got {type(root).__name__}")
    if not root.strip():
        raise StoreError("state store root is empty")
    if is_local_url(root):
        path = root.split("://", 1)[1] if "://" in root else root
        return os.path.abspath(os.path.expanduser(path or "/"))
    protocol, rest = root.split("://", 1)
    if not rest.strip("/"):
        raise StoreError(f"state store root {root!r} names no location")
    return f"{protocol}://{rest.rstrip('/')}"


# --------------------------------------------------------------------------- backends


class SymlinkRefused(FileNotFoundError):
    """A local state file (or a folder on its way) is a symbolic link."""


class LocalBackend:
    """Local filesystem I/O with fsync where durability matters and os.link for create-only.

    Reads never follow a symbolic link below the root: a state whose files point
    elsewhere (out of the state directory) is treated as corrupt.
    """

    local = True

    def __init__(self, base: str):
        self.base = base

    def _refuse_links(self, path: str) -> None:
        """Raise SymlinkRefused if ``path`` or a folder between it and the root is a link."""
        rel = os.path.relpath(path, self.base)
        if rel.startswith(".."):
            return
        current = self.base
        for part in rel.split(os.sep):
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise SymlinkRefused(f"{current} is a symbolic link")

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
            result = copy_hashing(chunks, f.write)
            f.flush()
            os.fsync(f.fileno())
        return result

    def put_files(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
        """Copy (local path, backend path) pairs, several at a time; (size, sha256) of each."""
        return upload_in_threads(self.write_stream, pairs)

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
        return {rel: st.st_size for rel, st in self._walk(path)}

    def stamps(self, path: str) -> dict[str, str | None]:
        """{relative '/' path: size, mtime and inode} of every file under directory ``path``."""
        return {rel: f"{st.st_size}|{st.st_mtime_ns}|{st.st_ino}" for rel, st in self._walk(path)}

    @staticmethod
    def _walk(path: str) -> Iterator[tuple[str, os.stat_result]]:
        for dirpath, _, filenames in os.walk(path):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                yield os.path.relpath(full, path).replace(os.sep, "/"), os.stat(full)

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

    def move_tree(self, path: str, target: str) -> None:
        """Rename a directory (atomic within one filesystem); missing is fine."""
        if not os.path.exists(path):
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(path, target)
        self._fsync_parents(path)
        self._fsync_parents(target)

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


class FsspecBackend:
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
            return copy_hashing(chunks, f.write)

    def put_files(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
        """Upload (local path, backend path) pairs concurrently: one batched ``put`` on an
        asynchronous filesystem (s3, gcs...), a few threads elsewhere; (size, sha256) of each.
        The batched path hashes the local files first; commit() checks the sizes that arrived."""
        if not getattr(self.fs, "async_impl", False) or len(pairs) <= 1:
            return upload_in_threads(self.write_stream, pairs)
        hashes = [hash_local_file(local) for local, _ in pairs]
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
        return {rel: int(info.get("size") or 0) for rel, info in self._listed(path).items()}

    def stamps(self, path: str) -> dict[str, str | None]:
        """{relative '/' path: the object's stamp (``remote_stamp``)} under ``path``; one listing."""
        return {rel: remote_stamp(info) for rel, info in self._listed(path).items()}

    def _listed(self, path: str) -> dict[str, dict]:
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = path.rstrip("/") + "/"
        return {
            name[len(prefix) :]: info
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

    def move_tree(self, path: str, target: str) -> None:
        """Copy every file under ``path`` to the same place under ``target``, then delete them
        (object stores have no rename); missing is fine. Interrupted, both copies remain and
        the move is done again."""
        self.fs.invalidate_cache(path)
        prefix = path.rstrip("/") + "/"
        try:
            files = [f for f in self.fs.find(path) if f.startswith(prefix)]
        except FileNotFoundError:
            return
        if files:
            self.fs.copy(files, [posixpath.join(target, f[len(prefix) :]) for f in files])
        self.remove_tree(path)
        self.fs.invalidate_cache(target)


def _has_native_create(fs) -> bool:
    """True if ``fs`` performs a server-side create-only write (s3fs ``mode="create"``)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "s3" not in protocols:
        return False
    pipe = getattr(fs, "_pipe_file", None)
    return pipe is not None and "mode" in inspect.signature(pipe).parameters


def _make_backend(root: str, storage_options: dict, *, retry_seconds: float | None = None) -> StorageBackend:
    """Backend for a normalised root; a remote one retries transient failures (rmrun.store.retry)."""
    if is_local_url(root):
        return LocalBackend(root)
    from rmrun.store.retry import DEFAULT_BUDGET_SECONDS, RetryingBackend, RetryPolicy

    options = dict(storage_options)
    # Other processes write the same root: never answer from a stale listing cache.
    options.setdefault("use_listings_cache", False)
    import fsspec  # on first use: local roots and the key names need none of it

    fs, base = fsspec.core.url_to_fs(root, **options)
    budget = DEFAULT_BUDGET_SECONDS if retry_seconds is None else retry_seconds
    return RetryingBackend(FsspecBackend(fs, base.rstrip("/")), RetryPolicy(where=root, budget_seconds=budget))
