"""One retry policy for every operation on a remote store.

Object stores fail in passing: a connection refused while a load balancer restarts, a
timeout, a 500/503, "SlowDown" throttling. Each such failure of a store operation is
retried with exponential backoff and full jitter until ``budget_seconds`` have passed
since the operation's first failure; then :class:`StoreUnreachable` is raised, one line,
and the run stops with the code that says "requeue me" (nothing committed is lost: a
commit is the last, create-only write, so an operation that never finished committed
nothing). Every other error (a missing file, a refused permission, a full disk) is not
transient and passes through at once.

A retried write is safe because every store write is idempotent: attempts are written
under fresh names, records are last-writer-wins, and ``create`` answers FileExistsError
when a lost reply hid its own success, which the commit protocol already accepts.
"""

from __future__ import annotations

import errno
import random
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from rmrun.store.errors import StoreUnreachable

T = TypeVar("T")

DEFAULT_BUDGET_SECONDS = 120.0
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0

# Exception class names (anywhere in an error's class hierarchy or its cause chain) that
# mean "the store did not answer": botocore, aiohttp, fsspec, urllib3, requests, gcsfs.
_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ProxyConnectionError",
        "ClientConnectorError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "FSTimeoutError",
        "IncompleteRead",
        "ResponseStreamingError",
        "ProtocolError",
        "NewConnectionError",
        "RemoteDisconnected",
        "HttpError",  # gcsfs: raised for 5xx and 429 (its 4xx become OSError subclasses)
    }
)
_TRANSIENT_TEXT = re.compile(
    r"\((500|502|503|504|429)\)|status(?: code)?[ =:]*(500|502|503|504|429)\b|SlowDown|Throttl|ServiceUnavailable|InternalError|RequestTimeout|"
    r"TooManyRequests|RequestLimitExceeded|Connection (reset|refused|aborted)|timed out",
    re.IGNORECASE,
)
_TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
)
# Answers that are final whatever their text says.
_FINAL = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the store did not answer, rather than
    answered no."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _FINAL):
            return False
        if isinstance(current, (TimeoutError, ConnectionError)):
            return True
        if {cls.__name__ for cls in type(current).__mro__} & _TRANSIENT_NAMES:
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        if _TRANSIENT_TEXT.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


class RetryPolicy:
    """Retries transient failures of one call for up to ``budget_seconds``."""

    def __init__(
        self,
        *,
        where: str,
        budget_seconds: float = DEFAULT_BUDGET_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.where = where
        self.budget_seconds = budget_seconds
        self._sleep = sleep
        self._clock = clock
        self._warned = False

    def call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        deadline = None
        delay = FIRST_DELAY_SECONDS
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if not is_transient(e):
                    raise
                now = self._clock()
                deadline = deadline if deadline is not None else now + self.budget_seconds
                if now >= deadline:
                    raise StoreUnreachable(
                        f"state store {self.where} did not answer for {self.budget_seconds:g} s "
                        f"({what}: {one_line(e)}); everything committed is intact"
                    ) from e
                self._warn(what, e)
                self._sleep(min(random.uniform(0, delay), max(0.0, deadline - now)))
                delay = min(MAX_DELAY_SECONDS, delay * 2)

    def _warn(self, what: str, error: BaseException) -> None:
        if not self._warned:
            self._warned = True
            print(
                f"rmrun: state store {self.where} is not answering ({what}: {one_line(error)}); "
                f"retrying for up to {self.budget_seconds:g} s",
                file=sys.stderr,
            )


class RetryingBackend:
    """A StorageBackend whose every operation goes through a :class:`RetryPolicy`.

    ``write_stream`` is retried only when its chunks can be replayed (bytes, a list or a
    tuple); a one-pass iterator is written once (fsspec retries the parts of a multipart
    upload itself)."""

    def __init__(self, inner, policy: RetryPolicy):
        self.inner = inner
        self.policy = policy
        self.local = inner.local
        self.base = inner.base

    def __getattr__(self, name: str):  # attributes a backend has beyond the protocol (fs)
        return getattr(self.inner, name)

    def path(self, *parts: str) -> str:
        return self.inner.path(*parts)

    def names(self, path: str) -> list[str]:
        return self.policy.call(f"listing {path}", self.inner.names, path)

    def read(self, path: str) -> bytes:
        return self.policy.call(f"reading {path}", self.inner.read, path)

    def open_read(self, path: str):
        return self.policy.call(f"opening {path}", self.inner.open_read, path)

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        if isinstance(chunks, (bytes, list, tuple)):
            return self.policy.call(f"writing {path}", self.inner.write_stream, path, chunks)
        return self.inner.write_stream(path, chunks)

    def put_files(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
        first = pairs[0][1] if pairs else ""
        return self.policy.call(f"uploading {len(pairs)} file(s) to {first}", self.inner.put_files, pairs)

    def write_atomic(self, path: str, data: bytes) -> None:
        self.policy.call(f"writing {path}", self.inner.write_atomic, path, data)

    def create(self, path: str, data: bytes) -> None:
        self.policy.call(f"creating {path}", self.inner.create, path, data)

    def sizes(self, path: str) -> dict[str, int]:
        return self.policy.call(f"listing {path}", self.inner.sizes, path)

    def sync_tree(self, path: str) -> None:
        self.inner.sync_tree(path)

    def remove_file(self, path: str) -> None:
        self.policy.call(f"deleting {path}", self.inner.remove_file, path)

    def remove_tree(self, path: str) -> None:
        self.policy.call(f"deleting {path}", self.inner.remove_tree, path)

    def move_tree(self, path: str, target: str) -> None:
        self.policy.call(f"moving {path}", self.inner.move_tree, path, target)
