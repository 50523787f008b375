"""Fault injection for resume tests and ``rmrun verify-resume``.

``RMRUN_FAULTS`` holds comma-separated directives, read once per process:

- ``kill@POINT:STEP`` — SIGKILL this process (rank 0 only unless ``kill@POINT:STEP:all``,
  or ``:rankN`` for rank N alone) when it reaches fault point POINT at optimizer step
  STEP; ``kill@POINT`` (no step) at the first time it reaches POINT.
- ``fail@POINT[:STEP]=ERRNO`` — raise ``OSError(ERRNO)`` there instead (``ENOSPC``,
  ``EROFS``, ``EIO``...): a failing disk or bucket, without one.
- ``term@POINT[:STEP]`` — send this process SIGTERM there and go on (a stop signal that
  arrives at a known moment, such as during a background upload).
- ``slow@POINT[:STEP]=SECONDS`` — sleep there (a slow bucket, without one).
- ``wait@POINT[:STEP]=OTHER:STEP`` — at POINT, wait until this process has reached OTHER
  at that step (in another thread, such as a background upload): orders a race for a
  test. Fails after 60 s rather than hang.
- ``no-restore=rng`` / ``no-restore=position`` — negative controls: skip restoring that
  piece of the resume state, so tests can prove they see the difference.
- ``no-heartbeat`` — negative control for the waits between ranks: a rank does not beat on
  the board (``rmrun.runtime.board``), as a frozen one would not.
- ``no-node-copy`` — negative control for the state reads: every process reads the
  state from the store itself instead of once per node.

:data:`FAULT_POINTS` lists every point, in the order a run reaches them; each store
write and each step boundary of the graph has one (the manual's list of fault points is
made from it). Unset, every function here is a no-op.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

# name -> where it is, in run order. A point reached at an optimizer step takes that
# step; the others are reached once per run (their step is the trainer's step then).
FAULT_POINTS = {
    "tokenize_piece": "a piece of the tokenized data staged, before its commit (its step: the pieces this "
    "start kept before it)",
    "tokenize_commit": "tokenized data staged, before its commit",
    "tokenized": "tokenized data committed, before the model is built",
    "boosted": "model built and checkpoint loaded, before the next optimizer step",
    "trackers_open": "rank 0's experiment trackers opened, in their thread, while the run goes on (only where "
    "log.trackers names one)",
    "step": "after an optimizer step, before its hooks",
    "eval": "inside an evaluation",
    "eval_piece": "a piece of an evaluation scored, before its commit where the eval set has more than one piece "
    "(its step: the piece)",
    "checkpoint_write": "checkpoint files written locally, before they are staged",
    "history_commit": "the metric lines since the last piece staged, before their commit",
    "checkpoint_upload": "a rank's checkpoint upload under way, its first file uploaded (in the background "
    "where checkpoint.async_upload is on)",
    "checkpoint_before_commit": "checkpoint staged, before its commit",
    "retention": "checkpoint committed, before old checkpoints are deleted",
    "epoch_commit": "epoch over, before its epoch marker is committed",
    "epoch_done": "epoch marker committed, before the next step of the graph",
    "eval_final_commit": "final evaluation done, before it is committed",
    "eval_final_done": "final evaluation committed and printed, before the export",
    "stats_piece": "a piece of the reward statistics scored and staged, before its commit (its step: the piece)",
    "export_upload": "export half uploaded (first file only)",
    "export_commit": "export uploaded, before the export record is committed",
    "export_done": "export record committed, before the run says it is done",
}


# Points a run reaches only where the recipe asks for what they are in: point -> the key.
CONDITIONAL_POINTS = {"trackers_open": "log.trackers"}


def fault_points_markdown() -> str:
    """:data:`FAULT_POINTS` as a Markdown table, in run order."""
    rows = ["| point | where a run reaches it |", "|---|---|"]
    rows += [f"| `{name}` | {where} |" for name, where in FAULT_POINTS.items()]
    return "\n".join(rows) + "\n"


def _directives() -> list[str]:
    return [d.strip() for d in os.environ.get("RMRUN_FAULTS", "").split(",") if d.strip()]


def restore_enabled(piece: str) -> bool:
    return f"no-restore={piece}" not in _directives()


def heartbeat_enabled() -> bool:
    return "no-heartbeat" not in _directives()


def node_copy_enabled() -> bool:
    return "no-node-copy" not in _directives()


def _matches(spec: str, point: str, step: int, rank: int) -> bool:
    """Whether ``POINT[:STEP][:all|:rankN]`` applies at (point, step, rank); rank 0 by default."""
    parts = spec.split(":")
    if parts[0] not in FAULT_POINTS:  # a typo must not turn a kill test into a clean run
        raise ValueError(f"RMRUN_FAULTS: unknown fault point {parts[0]!r}; known: {', '.join(FAULT_POINTS)}")
    if parts[0] != point:
        return False
    rest = parts[1:]
    ranks: set[int] | None = {0}
    if rest and (rest[-1] == "all" or rest[-1].startswith("rank")):
        ranks = None if rest[-1] == "all" else {int(rest[-1][len("rank") :])}
        rest = rest[:-1]
    return (not rest or int(rest[0]) == step) and (ranks is None or rank in ranks)


_reached: set[tuple[str, int]] = set()
_reached_changed = threading.Condition()
WAIT_SECONDS = 60.0


def _wait_until_reached(other: str) -> None:
    name, _, step = other.partition(":")
    if name not in FAULT_POINTS or not step.isdigit():
        raise ValueError(f"RMRUN_FAULTS: wait@ needs =POINT:STEP with a known point, got {other!r}")
    with _reached_changed:
        if not _reached_changed.wait_for(lambda: (name, int(step)) in _reached, timeout=WAIT_SECONDS):
            raise RuntimeError(f"RMRUN_FAULTS: {other} not reached within {WAIT_SECONDS:.0f} s")


def _mark_reached(point: str, step: int) -> None:
    with _reached_changed:
        _reached.add((point, step))
        _reached_changed.notify_all()


def fault_point(point: str, *, step: int = 0, rank: int = 0) -> None:
    assert point in FAULT_POINTS, point
    directives = _directives()
    if not directives:
        return
    for directive in directives:
        action, _, spec = directive.partition("@")
        if action not in ("kill", "fail", "term", "slow", "wait"):
            continue
        spec, _, value = spec.partition("=")
        if not _matches(spec, point, step, rank):
            continue
        if action == "term":  # sent before the point counts as reached, so a waiter sees it
            os.kill(os.getpid(), signal.SIGTERM)
            continue
        _mark_reached(point, step)
        if action == "wait":
            _wait_until_reached(value)
        elif action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "slow":
            time.sleep(float(value))
        else:
            number = getattr(errno, value or "EIO")
            raise OSError(number, f"{os.strerror(number)} (injected at {point})")
    _mark_reached(point, step)


def trace_pairs(*, rank: int, epoch: int, step: int, pair_ids: list[int]) -> None:
    """With ``RMRUN_TRACE_PAIRS=PATH``, append the pairs each rank trains on to PATH.rank<r>."""
    path = os.environ.get("RMRUN_TRACE_PAIRS")
    if not path:
        return
    import json

    with open(f"{path}.rank{rank}", "a") as f:
        f.write(json.dumps({"epoch": epoch, "step": step, "pairs": pair_ids}) + "\n")
