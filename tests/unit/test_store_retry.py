"""The store's one retry policy (rmrun/store/retry.py): which failures are transient, how
long they are retried, and what is raised when the budget runs out."""

from __future__ import annotations

import errno

import pytest

from rmrun.store import StoreUnreachable
from rmrun.store.retry import RetryingBackend, RetryPolicy, is_transient


class EndpointConnectionError(Exception):  # botocore's, by name: rmrun imports no boto
    pass


class ClientError(Exception):
    pass


TRANSIENT = [
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    TimeoutError("read timed out"),
    EndpointConnectionError('Could not connect to the endpoint URL: "http://127.0.0.1:9000/b"'),
    OSError(errno.ECONNRESET, "Connection reset by peer"),
    ClientError("An error occurred (SlowDown) when calling the PutObject operation: Please reduce your request rate."),
    ClientError("An error occurred (503) when calling the HeadObject operation: Service Unavailable"),
    ClientError("An error occurred (InternalError) when calling the GetObject operation"),
]
FINAL = [
    FileNotFoundError(errno.ENOENT, "The specified key does not exist"),
    FileExistsError("COMMIT"),
    PermissionError(errno.EACCES, "Access Denied"),
    OSError(errno.ENOSPC, "No space left on device"),
    ValueError("step 500 of 503 is not valid"),  # numbers in a message are not status codes
    ClientError("An error occurred (NoSuchBucket) when calling the ListObjectsV2 operation"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_failures_to_answer_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", FINAL, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_answers_are_final(error):
    assert not is_transient(error)


def test_a_wrapped_cause_counts():
    try:
        try:
            raise EndpointConnectionError("no route")
        except EndpointConnectionError as e:
            raise OSError("s3fs translated it") from e
    except OSError as wrapped:
        assert is_transient(wrapped)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _failing(times: int, error: Exception, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result

    return fn, calls


def test_an_outage_shorter_than_the_budget_is_ridden_out(capsys):
    time = FakeTime()
    policy = RetryPolicy(where="s3://b/run", budget_seconds=120, sleep=time.sleep, clock=time.clock)
    fn, calls = _failing(6, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert policy.call("reading x", fn) == "ok"
    assert len(calls) == 7
    assert all(0 <= s <= 10 for s in time.slept) and time.now < 120
    warned = capsys.readouterr().err.splitlines()
    assert warned == [
        "rmrun: state store s3://b/run is not answering (reading x: ConnectionRefusedError: [Errno 111] refused); "
        "retrying for up to 120 s"
    ]


def test_an_outage_past_the_budget_raises_store_unreachable_in_one_line():
    time = FakeTime()
    policy = RetryPolicy(where="s3://b/run", budget_seconds=30, sleep=time.sleep, clock=time.clock)
    fn, calls = _failing(10**6, TimeoutError("timed out"))
    with pytest.raises(
        StoreUnreachable,
        match=r"^state store s3://b/run did not answer for 30 s \(listing y: TimeoutError: timed out\); everything committed is intact$",
    ):
        policy.call("listing y", fn)
    assert 30 <= time.now <= 30 + 1e-9  # it waits out the budget, no longer
    assert len(calls) > 3


def test_a_final_error_is_raised_at_once():
    time = FakeTime()
    policy = RetryPolicy(where="s3://b/run", sleep=time.sleep, clock=time.clock)
    fn, calls = _failing(1, FileNotFoundError("gone"))
    with pytest.raises(FileNotFoundError):
        policy.call("reading z", fn)
    assert len(calls) == 1 and time.slept == []


class FlakyBackend:
    local = False
    base = "bucket/run"

    def __init__(self):
        self.failures = 2
        self.written: list[bytes] = []

    def write_stream(self, path, chunks):
        data = b"".join(chunks)
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        self.written.append(data)
        return len(data), "sha"


def test_a_write_is_retried_only_when_its_chunks_can_be_replayed():
    time = FakeTime()
    backend = RetryingBackend(FlakyBackend(), RetryPolicy(where="s3://b", sleep=time.sleep, clock=time.clock))
    assert backend.write_stream("bucket/run/a", [b"x", b"y"]) == (2, "sha")
    assert backend.inner.written == [b"xy"]
    backend.inner.failures = 1
    with pytest.raises(ConnectionResetError):  # a one-pass iterator is not replayed
        backend.write_stream("bucket/run/b", iter([b"z"]))
