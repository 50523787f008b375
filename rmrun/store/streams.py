"""Streaming bytes to and from storage in chunks, hashing as they go."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

CHUNK_SIZE = 8 * 2**20
UPLOAD_THREADS = 8  # files one writer uploads at a time where the backend has no batched put


def copy_hashing(chunks: Iterable[bytes], write: Callable[[bytes], object]) -> tuple[int, str]:
    """Pass every chunk to ``write``; return (total size, hex sha256)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        write(chunk)
    return size, digest.hexdigest()


def hash_local_file(path: str) -> tuple[int, str]:
    """(size, hex sha256) of a local file."""
    with open(path, "rb") as f:
        return copy_hashing(read_chunks(f), lambda chunk: None)


def upload_in_threads(write_stream, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Stream each (local path, backend path) through ``write_stream``, a few at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def upload(pair: tuple[str, str]) -> tuple[int, str]:
        with open(pair[0], "rb") as f:
            return write_stream(pair[1], read_chunks(f))

    if len(pairs) <= 1:
        return [upload(pair) for pair in pairs]
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(pairs)), thread_name_prefix="rmrun-upload") as pool:
        return list(pool.map(upload, pairs))


def read_chunks(fileobj) -> Iterator[bytes]:
    """Iterate over a binary file in CHUNK_SIZE pieces."""
    return iter(lambda: fileobj.read(CHUNK_SIZE), b"")


# Fields of an object store's file info that change when the object is written again.
REMOTE_STAMPS = ("ETag", "etag", "md5Hash", "crc32c", "checksum", "LastModified", "mtime", "updated")


def remote_stamp(info: dict) -> str | None:
    """A string from a file's fsspec info that changes whenever the object may have been
    written again; None when the store gives nothing reliable."""
    for name in REMOTE_STAMPS:
        if info.get(name):
            return f"{info.get('size')}|{name}={info[name]}"
    return None
