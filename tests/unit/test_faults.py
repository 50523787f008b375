"""The fault-injection directives: kill and fail at a named point, negative controls."""

from __future__ import annotations

import errno

import pytest

from rmrun.runtime.faults import FAULT_POINTS, fault_point, restore_enabled


def test_fail_raises_the_named_errno_at_the_named_point_and_step(monkeypatch):
    monkeypatch.setenv("RMRUN_FAULTS", "fail@checkpoint_before_commit:4=ENOSPC")
    fault_point("checkpoint_before_commit", step=3)  # another step: nothing happens
    fault_point("retention", step=4)  # another point: nothing happens
    with pytest.raises(OSError) as caught:
        fault_point("checkpoint_before_commit", step=4)
    assert caught.value.errno == errno.ENOSPC and "injected at checkpoint_before_commit" in str(caught.value)


def test_a_point_without_a_step_matches_any_step_and_other_ranks_only_with_all(monkeypatch):
    monkeypatch.setenv("RMRUN_FAULTS", "fail@export_upload")
    with pytest.raises(OSError) as caught:
        fault_point("export_upload", step=12)
    assert caught.value.errno == errno.EIO
    fault_point("export_upload", step=12, rank=1)  # rank 1 is spared without ":all"
    monkeypatch.setenv("RMRUN_FAULTS", "fail@eval:all=EROFS")
    with pytest.raises(OSError):
        fault_point("eval", step=3, rank=1)


def test_an_unknown_point_in_a_directive_is_refused(monkeypatch):
    monkeypatch.setenv("RMRUN_FAULTS", "kill@tokenise")
    with pytest.raises(ValueError, match="unknown fault point 'tokenise'"):
        fault_point("tokenize_commit")  # a typo must not turn a kill test into a clean run
    monkeypatch.setenv("RMRUN_FAULTS", "kill@step:x")
    with pytest.raises(ValueError):
        fault_point("step", step=1)


def test_negative_controls_and_the_point_list(monkeypatch):
    monkeypatch.setenv("RMRUN_FAULTS", "no-restore=rng")
    assert not restore_enabled("rng") and restore_enabled("position")
    assert list(FAULT_POINTS)[:4] == ["tokenize_piece", "tokenize_commit", "tokenized", "boosted"]
    assert list(FAULT_POINTS)[-1] == "export_done"


def test_rank_selection_term_and_slow(monkeypatch):
    import signal
    import time

    monkeypatch.setenv("RMRUN_FAULTS", "fail@checkpoint_upload:2:rank1=EIO")
    fault_point("checkpoint_upload", step=2, rank=0)  # rank 0 is spared: the directive names rank 1
    with pytest.raises(OSError, match="injected at checkpoint_upload"):
        fault_point("checkpoint_upload", step=2, rank=1)
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        monkeypatch.setenv("RMRUN_FAULTS", "term@checkpoint_upload:4,slow@checkpoint_upload:4=0.2")
        started = time.monotonic()
        fault_point("checkpoint_upload", step=4)
        assert received == [signal.SIGTERM] and time.monotonic() - started >= 0.2
        fault_point("checkpoint_upload", step=5)  # another step: neither
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
