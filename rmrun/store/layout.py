"""Where everything lives under a store root, what a valid name is, and how the
stored JSON documents are encoded (the tree is drawn in ``rmrun/store/__init__.py``)."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import secrets
import time

from rmrun.store.backends import StorageBackend
from rmrun.store.errors import StoreError

FORMAT_VERSION = 1
STATES_DIR = "states"
RECORDS_DIR = "records"
LEASE_DIR = "lease"
MANIFEST_NAME = "MANIFEST.json"
COMMIT_NAME = "COMMIT"
QUARANTINE_PREFIX = "QUARANTINE-"
SET_ASIDE_DIR = "quarantined"  # <root>/quarantined/<key>.<attempt>/: replaced states, moved aside, never deleted
LOCK_NAME = "lease.lock"
INVALID_COMMIT = "invalid-commit"  # attempt label used to quarantine an unreadable COMMIT

SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}\Z")
LEASE_FILE_RE = re.compile(r"(\d{12})\.json\Z")
ATTEMPT_RE = re.compile(r"g\d{6,}-[A-Za-z0-9._-]+\Z")
_ATTEMPT_GENERATION_RE = re.compile(r"g(\d+)-")


class Layout:
    """Paths of states, attempts, records and lease records under one root's backend."""

    def __init__(self, backend: StorageBackend):
        self.backend = backend

    def key_path(self, key: str) -> str:
        return self.backend.path(STATES_DIR, key)

    def attempt_path(self, key: str, attempt: str) -> str:
        return self.backend.path(STATES_DIR, key, attempt)

    def commit_path(self, key: str) -> str:
        return self.backend.path(STATES_DIR, key, COMMIT_NAME)

    def manifest_path(self, key: str, attempt: str) -> str:
        return self.backend.path(STATES_DIR, key, attempt, MANIFEST_NAME)

    def quarantine_path(self, key: str, attempt: str) -> str:
        return self.backend.path(STATES_DIR, key, quarantine_name(attempt))

    def record_path(self, name: str) -> str:
        return self.backend.path(RECORDS_DIR, name + ".json")

    def lease_path(self, generation: int) -> str:
        return self.backend.path(LEASE_DIR, f"{generation:012d}.json")

    def key_names(self, prefix: str) -> list[str]:
        """Sorted names of key folders under states/ starting with ``prefix``."""
        names = self.backend.names(self.backend.path(STATES_DIR))
        return [n for n in names if n.startswith(prefix) and SEGMENT_RE.match(n)]


def check_format(found: object, *, what: str) -> None:
    """Raise NewerFormat when ``found`` (a document's "format") is newer than this rmrun's."""
    from rmrun.store.errors import NewerFormat

    if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT_VERSION:
        raise NewerFormat(
            f"{what} was written by a newer rmrun (format {found}; this one reads format {FORMAT_VERSION}): "
            "upgrade rmrun to resume this run; nothing in the state was changed"
        )


def quarantine_name(attempt: str) -> str:
    return f"{QUARANTINE_PREFIX}{attempt}.json"


def new_attempt_name(generation: int, run_id: str) -> str:
    """A never-reused attempt name: lease generation + run id + random suffix."""
    return f"g{generation:06d}-{run_id}-{secrets.token_hex(4)}"


def attempt_generation(attempt: str) -> int | None:
    """Lease generation encoded in an attempt name, or None if it has none."""
    match = _ATTEMPT_GENERATION_RE.match(attempt)
    return int(match.group(1)) if match else None


def new_run_id() -> str:
    """A path-safe, unique-enough identifier of one lease acquisition."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


# --------------------------------------------------------------------------- names


def check_key(key: str) -> None:
    """Reject state keys that are not a single safe path segment."""
    if not isinstance(key, str) or not SEGMENT_RE.match(key):
        raise StoreError(
            f"invalid state key {key!r}: use letters, digits, '.', '_', '-' (no '/'), "
            "starting with a letter, digit or '_'"
        )


def check_prefix(prefix: str) -> None:
    """Reject key prefixes that could never match a key."""
    if not isinstance(prefix, str) or "/" in prefix:
        raise StoreError(f"invalid state key prefix {prefix!r}: keys contain no '/'")


def check_record_name(name: str) -> None:
    """Record names are '/'-separated safe segments."""
    if not isinstance(name, str) or not all(SEGMENT_RE.match(part) for part in name.split("/")):
        raise StoreError(f"invalid record name {name!r}: use '/'-separated letters, digits, '.', '_', '-'")


def check_file_name(name: str) -> None:
    """File names in a state are relative POSIX paths without '.'/'..' or empty parts."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if any(part in ("", ".", "..") or "\x00" in part for part in parts):
        raise StoreError(f"invalid file name {name!r}: must be a relative path without '.' or '..'")
    if name == MANIFEST_NAME:
        raise StoreError(f"invalid file name {name!r}: reserved for the manifest")


# --------------------------------------------------------------------------- documents


def utc_now() -> str:
    """Current UTC time as an ISO-8601 string."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def json_bytes(obj: object) -> bytes:
    """Deterministic, human-readable JSON encoding used for every stored document."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def json_copy(obj: dict, *, what: str) -> dict:
    """Return a JSON round-tripped copy of ``obj`` or raise a one-line StoreError."""
    if not isinstance(obj, dict):
        raise StoreError(f"{what} must be a dict, got {type(obj).__name__}")
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-serialisable: {exc}") from None


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
