"""A local S3 (moto) that counts the bytes it serves, per client and per object.

tests/conftest.py registers it (``pytest_plugins``), so any test takes it by name::

    def test_reads(counting_s3):
        root = counting_s3.root("run")            # fresh "s3://rmrun-count/run-<unique>"
        env = counting_s3.client_env("node0")      # a child process counted as "node0"
        counting_s3.reset()
        ...                                        # run something with env
        assert counting_s3.served(client="node0") <= budget

The server is moto's WSGI app (``create_backend_app`` behind its domain dispatcher, as
``moto.server.ThreadedMotoServer`` serves it) wrapped in :class:`ByteCounter`, served by
werkzeug on 127.0.0.1 at a port chosen by the OS. Only response bodies of GET requests
count (object reads and listings; HEAD has no body, PUT bodies go the other way).

Clients are told apart by the access key id in their request signature (moto accepts
any): each simulated node gets its own ``AWS_ACCESS_KEY_ID``, so one server can say
how much each node read. Moto keeps its buckets per process, so this server and the
one of tests/s3server.py see the same objects.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import urllib.parse
import uuid

import pytest

from tests.s3server import _clear_s3fs_instances, _restore_environment, _set_environment

BUCKET = "rmrun-count"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class ByteCounter:
    """WSGI middleware: the GET requests in the order they arrived, each with its client,
    path ("object" reads) or listed prefix ("list"), and the bytes of its response body."""

    def __init__(self, app):
        self.app = app
        self._lock = threading.Lock()
        self._events: list[list] = []  # [client, path, kind, bytes]

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        client = match.group(1) if match else "anonymous"
        path = environ.get("PATH_INFO", "")
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if "prefix" in query or "list-type" in query:  # a listing: counted under the prefix it lists
            event = [client, path.rstrip("/") + "/" + query.get("prefix", [""])[0], "list", 0]
        else:
            event = [client, path, "object", 0]
        with self._lock:
            self._events.append(event)
        return self._counted(self.app(environ, start_response), event)

    def _counted(self, body, event):
        try:
            for chunk in body:
                with self._lock:
                    event[3] += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def reset(self) -> None:
        with self._lock:
            self._events.clear()

    def events(self) -> list[tuple]:
        with self._lock:
            return [tuple(e) for e in self._events]


class CountingS3:
    """The running server: fresh roots, per-client environments and the byte counts."""

    def __init__(self, endpoint_url: str, bucket: str, counter: ByteCounter):
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.counter = counter

    def root(self, name: str = "root") -> str:
        """A new, empty ``s3://`` root URL."""
        _clear_s3fs_instances()
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def client_env(client: str, env: dict | None = None) -> dict:
        """``env`` (default os.environ) with the requests of a child process counted as ``client``."""
        out = dict(os.environ if env is None else env)
        out["AWS_ACCESS_KEY_ID"] = client
        return out

    def reset(self) -> None:
        self.counter.reset()

    def served(
        self, *, client: str | None = None, under: str | None = None, kind: str | None = None, until: str | None = None
    ) -> int:
        """Bytes served to ``client`` (all clients if None) for paths starting with ``under``
        (an ``s3://bucket/...`` URL; everything if None), of ``kind`` ("object", "list"; both
        if None), in the requests that came before the first one of that client for a path
        starting with ``until`` (all of them if None)."""
        total = 0
        for who, path, what, n in self.counter.events():
            if client is not None and who != client:
                continue
            if until is not None and path.startswith(_path(until)):
                break
            if (under is None or path.startswith(_path(under))) and (kind is None or what == kind):
                total += n
        return total

    def largest(self, *, client: str | None = None, until: str | None = None, count: int = 10) -> list:
        """[(kind, path, bytes)] of the ``count`` paths most read (``served``'s filters)."""
        totals: collections.Counter = collections.Counter()
        for who, path, what, n in self.counter.events():
            if client is not None and who != client:
                continue
            if until is not None and path.startswith(_path(until)):
                break
            totals[what, path] += n
        return [(what, path, n) for (what, path), n in totals.most_common(count)]

    def clients(self) -> set[str]:
        return {event[0] for event in self.counter.events()}


def _path(url: str) -> str:
    """Request path of an ``s3://bucket/key`` URL."""
    return "/" + url.split("://", 1)[-1].lstrip("/")


@pytest.fixture(scope="module")
def counting_s3():
    """Start a byte-counting moto S3 server for the module; yield a CountingS3."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counter = ByteCounter(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    endpoint_url = f"http://{host}:{port}"
    saved = _set_environment(endpoint_url)
    try:
        boto3.client("s3", endpoint_url=endpoint_url).create_bucket(Bucket=BUCKET)
        yield CountingS3(endpoint_url, BUCKET, counter)
    finally:
        _clear_s3fs_instances()
        _restore_environment(saved)
        server.shutdown()
        thread.join(timeout=10)
