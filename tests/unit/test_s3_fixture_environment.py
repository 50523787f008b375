"""The S3 test servers' fixtures (tests/s3server.py, tests/s3counting.py) point this process's
fsspec at the server running now, and back at the previous one when it stops: fsspec reads
``FSSPEC_S3_ENDPOINT_URL`` only once, at its first import, so a module whose fixture started
first would otherwise leave a later module's filesystems reaching a stopped server."""

from __future__ import annotations

import os

import fsspec.config

from tests.s3server import _restore_environment, _set_environment


def endpoint() -> str | None:
    return fsspec.config.conf.get("s3", {}).get("endpoint_url")


def test_fsspecs_s3_endpoint_follows_the_fixtures_nested_and_restored():
    before = os.environ.get("FSSPEC_S3_ENDPOINT_URL")
    outer = _set_environment("http://127.0.0.1:1")
    try:
        assert endpoint() == "http://127.0.0.1:1"
        inner = _set_environment("http://127.0.0.1:2")
        assert endpoint() == "http://127.0.0.1:2"
        _restore_environment(inner)
        assert endpoint() == "http://127.0.0.1:1"
    finally:
        _restore_environment(outer)
    assert endpoint() == before
    assert os.environ.get("FSSPEC_S3_ENDPOINT_URL") == before
