"""Process-wide settings, made once where a process starts rather than when a module is imported.

:func:`configure_process` runs at the CLI's entry and in :func:`rmrun.dist.start`, which
every process that trains, scores or benchmarks passes through (the CLI's, torchrun's
workers, the bench workers); it is idempotent.
"""

from __future__ import annotations

import os

WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def configure_process() -> None:
    # Every torch.load in this process, ColossalAI's checkpoint I/O included, refuses
    # arbitrary pickles (torch reads the variable at each load).
    os.environ[WEIGHTS_ONLY] = "1"
