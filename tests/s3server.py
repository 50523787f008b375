"""A local S3 (moto server) for tests, as a session-scoped pytest fixture.

tests/conftest.py registers it (``pytest_plugins``), so any test takes it by name::

    def test_something(s3_root):
        root = s3_root()          # fresh "s3://rmrun-test/<unique>" URL
        ...

The server listens on 127.0.0.1 on a port chosen by the OS.  While it runs,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (``testing``),
``AWS_DEFAULT_REGION`` (``us-east-1``), ``AWS_ENDPOINT_URL`` and
``FSSPEC_S3_ENDPOINT_URL`` are set in ``os.environ``, so boto3, s3fs and child
processes started by tests all reach it; they are restored afterwards.  Each
``s3_root()`` call clears s3fs's instance cache so no filesystem object (and
its cached listings) leaks from one test into the next.
"""

from __future__ import annotations

import logging
import os
import uuid

import pytest

BUCKET = "rmrun-test"
_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class S3Roots:
    """Callable giving fresh, empty ``s3://<bucket>/<unique>`` roots on the test server."""

    def __init__(self, endpoint_url: str, bucket: str):
        self.endpoint_url = endpoint_url
        self.bucket = bucket

    def __call__(self, name: str = "root") -> str:
        """A new root URL; ``name`` only makes it easier to recognise."""
        _clear_s3fs_instances()
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:12]}"


def _clear_s3fs_instances() -> None:
    """Forget cached S3FileSystem instances (and their listing caches)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _set_environment(endpoint_url: str) -> dict:
    """Point AWS clients at the server; return the previous values to restore."""
    wanted = dict(_ENV, AWS_ENDPOINT_URL=endpoint_url, FSSPEC_S3_ENDPOINT_URL=endpoint_url)
    saved = {name: os.environ.get(name) for name in (*wanted, *_UNSET)}
    os.environ.update(wanted)
    for name in _UNSET:
        os.environ.pop(name, None)
    _sync_fsspec_config()
    return saved


def _restore_environment(saved: dict) -> None:
    """Put back the variables changed by _set_environment."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _sync_fsspec_config()


def _sync_fsspec_config() -> None:
    """fsspec reads ``FSSPEC_S3_ENDPOINT_URL`` into its config once, when it is first imported:
    follow the variable, or a filesystem made in this process would reach whichever server was
    running at that import (one another module's fixture may have stopped since)."""
    import fsspec.config

    s3 = fsspec.config.conf.setdefault("s3", {})
    endpoint = os.environ.get("FSSPEC_S3_ENDPOINT_URL")
    if endpoint:
        s3["endpoint_url"] = endpoint
    else:
        s3.pop("endpoint_url", None)


@pytest.fixture(scope="session")
def s3_root():
    """Start moto's S3 server for the session; yield an S3Roots factory."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    saved = _set_environment(endpoint_url)
    try:
        boto3.client("s3", endpoint_url=endpoint_url).create_bucket(Bucket=BUCKET)
        yield S3Roots(endpoint_url, BUCKET)
    finally:
        _clear_s3fs_instances()
        _restore_environment(saved)
        server.stop()
