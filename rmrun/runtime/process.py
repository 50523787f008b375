"""Process-wide settings, made once where a process starts rather than when a module is imported.

:func:`configure_process` runs at the CLI's entry and in :func:`rmrun.runtime.dist.start`, which
every process that trains, scores or benchmarks passes through (the CLI's, torchrun's
workers, the bench workers); it is idempotent.
"""

from __future__ import annotations

import os
import sys
import warnings

WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"

# MKL's conditional numerical reproducibility mode. Left unset, MKL's threaded kernels
# (the GEMMs behind torch's CPU linear, matmul and bmm) may split work by which of the
# OpenMP threads is free first, so two identical runs can round differently (one ulp in
# some rows of a batch) and resumed weights would not be bit-identical. "AUTO" keeps the
# fastest code path for the CPU and makes the split fixed for a given thread count.
MKL_CBWR = "MKL_CBWR"
MKL_CBWR_DEFAULT = "AUTO"

# Third-party notices about optional kernels rmrun does not use (ColossalAI's async save and
# fused RMSNorm), printed as warnings at every import: silenced by their text, so any other
# warning still shows.
QUIET_WARNINGS = (
    r"Please install the latest tensornvme",  # colossalai.utils.safetensors: async save
    r"Please install apex from source",  # colossalai.shardformer: fused RMSNorm, not used by ddp
)
# transformers' own logging: "Some weights ... newly initialized" (rmrun initialises the
# reward head itself) and the like; errors still show. A user's own setting is kept.
TRANSFORMERS_VERBOSITY = "TRANSFORMERS_VERBOSITY"


def configure_process() -> None:
    # Every torch.load in this process, ColossalAI's checkpoint I/O included, refuses
    # arbitrary pickles (torch reads the variable at each load).
    os.environ[WEIGHTS_ONLY] = "1"
    # MKL reads the variable once, at its first call in the process: this has to run before
    # any torch computation on the CPU (it does at the CLI's entry), and it reaches the
    # processes started from this one (torchrun's workers, the bench workers). A mode the
    # user chose (e.g. COMPATIBLE, for the same results across CPU types) is kept.
    os.environ.setdefault(MKL_CBWR, MKL_CBWR_DEFAULT)
    os.environ.setdefault(TRANSFORMERS_VERBOSITY, "error")
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


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


# --------------------------------------------------------------------------- stop signals


class StopRequested(Exception):
    """A stop signal was acted on; ``signum`` is the signal (None: another rank's)."""

    signum: int | None


class Stopped(StopRequested):
    """A stop signal was acted on outside the training loop (before training had anything
    to save, or after it): what is committed is intact and the same command resumes."""

    def __init__(self, signum: int, where: str):
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)} {where}; everything committed is intact")


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) are requests to stop, each with one contract.

    Inside the training loop (``deferred``) a request only sets ``requested``; the loop
    commits a checkpoint at the next step boundary and stops (rmrun.train.hooks). Anywhere else
    a request raises :class:`Stopped` at once: before training there is nothing to save,
    after it every finished step is committed. A second SIGINT while the first is being
    acted on raises KeyboardInterrupt: stop now, without a checkpoint.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        self.requested: int | None = None  # the first stop signal received
        self.deferred = False
        self.where = "before training had a checkpoint to save"

    def install(self) -> None:
        import signal

        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = signum
        if not self.deferred:
            raise Stopped(self.requested, self.where)

    def defer(self) -> None:
        """From here on a request waits for the training loop to act on it."""
        self.deferred = True

    def undefer(self, *, where: str) -> None:
        """A request now stops at once (one already received is acted on here)."""
        self.deferred = False
        self.where = where
        if self.requested is not None:
            raise Stopped(self.requested, where)


STOP = StopSignals()


# --------------------------------------------------------------------------- local scratch


class ScratchFull(OSError):
    """Node-local scratch (``TMPDIR``) could not hold what a run writes there (a checkpoint's
    snapshot, a state read once per node): one line naming the folder and the space needed."""

    @classmethod
    def explains(cls, error: BaseException) -> bool:
        """Whether ``error`` says the local disk is full or cannot be written."""
        import errno

        if isinstance(error, OSError):
            return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
        text = str(error)
        return "file write failed" in text or "No space left" in text or "unexpected pos" in text

    @classmethod
    def of(cls, error: BaseException, *, what: str, needed: int) -> ScratchFull:
        import errno
        import shutil
        import tempfile

        folder = tempfile.gettempdir()
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free"
        except OSError:
            free = "free space unknown"
        cause = (getattr(error, "strerror", None) or str(error)).strip().splitlines()[:1]
        return cls(
            errno.ENOSPC,
            f"local scratch {folder} (TMPDIR) cannot hold {what}: it needs about {needed / 2**20:,.0f} MiB "
            f"({free}; {cause[0] if cause else type(error).__name__}); the last committed checkpoint is intact: "
            "point TMPDIR at a disk with room (or free it) and run the same command again",
        )

    def __str__(self) -> str:
        return str(self.strerror)
