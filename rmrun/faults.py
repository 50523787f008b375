"""Fault injection for resume tests and ``rmrun verify-resume``.

``RMRUN_FAULTS`` holds comma-separated directives, read once per process:

- ``kill@POINT:STEP`` — SIGKILL this process (rank 0 only unless ``kill@POINT:STEP:all``)
  when it reaches fault point POINT at optimizer step STEP. Points: ``step`` (after an
  optimizer step, before its hooks), ``boosted`` (model built and checkpoint loaded, before
  the next step: ``kill@boosted:0`` dies before the first step of a fresh run), ``checkpoint_write`` (after the model files are
  written, before the commit), ``checkpoint_before_commit``, ``retention`` (after a
  commit, before old checkpoints are deleted), ``eval`` (inside an evaluation).
- ``no-restore=rng`` / ``no-restore=position`` — negative controls: skip restoring that
  piece of the resume state, so tests can prove they see the difference.

Unset, every function here is a no-op.
"""

from __future__ import annotations

import os
import signal


def _directives() -> list[str]:
    return [d.strip() for d in os.environ.get("RMRUN_FAULTS", "").split(",") if d.strip()]


def restore_enabled(piece: str) -> bool:
    return f"no-restore={piece}" not in _directives()


def fault_point(point: str, *, step: int, rank: int = 0) -> None:
    for directive in _directives():
        if not directive.startswith("kill@"):
            continue
        parts = directive[len("kill@") :].split(":")
        if parts[0] != point or int(parts[1]) != step:
            continue
        everyone = len(parts) > 2 and parts[2] == "all"
        if everyone or rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)


def trace_pairs(*, rank: int, epoch: int, step: int, pair_ids: list[int]) -> None:
    """With ``RMRUN_TRACE_PAIRS=PATH``, append the pairs each rank trains on to PATH.rank<r>."""
    path = os.environ.get("RMRUN_TRACE_PAIRS")
    if not path:
        return
    import json

    with open(f"{path}.rank{rank}", "a") as f:
        f.write(json.dumps({"epoch": epoch, "step": step, "pairs": pair_ids}) + "\n")
