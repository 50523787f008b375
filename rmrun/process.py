"""Process-wide settings, made once where a process starts rather than when a module is imported.

:func:`configure_process` runs at the CLI's entry and in :func:`rmrun.dist.start`, which
every process that trains, scores or benchmarks passes through (the CLI's, torchrun's
workers, the bench workers); it is idempotent.
"""

from __future__ import annotations

import os
import sys

WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"

# MKL's conditional numerical reproducibility mode. Left unset, MKL's threaded kernels
# (the GEMMs behind torch's CPU linear, matmul and bmm) may split work by which of the
# OpenMP threads is free first, so two identical runs can round differently (one ulp in
# some rows of a batch) and resumed weights would not be bit-identical. "AUTO" keeps the
# fastest code path for the CPU and makes the split fixed for a given thread count.
MKL_CBWR = "MKL_CBWR"
MKL_CBWR_DEFAULT = "AUTO"


def configure_process() -> None:
    # Every torch.load in this process, ColossalAI's checkpoint I/O included, refuses
    # arbitrary pickles (torch reads the variable at each load).
    os.environ[WEIGHTS_ONLY] = "1"
    # MKL reads the variable once, at its first call in the process: this has to run before
    # any torch computation on the CPU (it does at the CLI's entry), and it reaches the
    # processes started from this one (torchrun's workers, the bench workers). A mode the
    # user chose (e.g. COMPATIBLE, for the same results across CPU types) is kept.
    os.environ.setdefault(MKL_CBWR, MKL_CBWR_DEFAULT)


def outlive_readers() -> None:
    """A run keeps going when whoever reads its output goes away (``rmrun run ... | head``, a
    log collector that died): from then on its stdout or stderr is discarded instead of every
    later print failing with BrokenPipeError and stopping the training. (Only for runs: the
    other commands stop at a broken pipe, which ends them quietly, rather than compute what
    nobody reads.)"""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ReaderMayGo):
            setattr(sys, name, _ReaderMayGo(stream))


def discard_output(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null: its reader is gone, and what is still
    buffered (or written later) can then be flushed without failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class _ReaderMayGo:
    """A text stream whose writes, once the pipe's reader is gone, go to /dev/null."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()
            self._stream.flush()  # what was buffered now goes to /dev/null

    def _discard(self) -> None:
        discard_output(self._stream)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
