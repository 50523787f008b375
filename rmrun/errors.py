"""The one map from an exception to rmrun's exit code and its one-line message.

Commands raise; the CLI (``rmrun.cli.main``) turns whatever reaches it into an exit code
here, for every command. Exit codes, documented in README.md:

- 0 done (also: the run was already complete; the output's reader went away);
- 1 a bug in rmrun: a traceback was printed;
- 2 recipe, data or usage error: fix the input, never retry as is;
- 3 the state cannot be used (no checkpoint loads, newer format, disk full, read-only,
  lease lost): needs a human;
- 75 (``run.preempted_exit_code`` in a run) stopped by a signal or an unreachable store,
  nothing committed lost: requeue;
- 130 stopped by Ctrl-C (SIGINT).

Its top imports no other rmrun module: an exception class is looked up only in a
module already imported (an exception of a class never imported cannot have been raised),
so mapping a recipe error does not import torch.
"""

from __future__ import annotations

import signal
import sys
import traceback

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNUSABLE = 3
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130

# "module:Class" of the errors each code stands for.
USAGE_ERRORS = (
    "rmrun.recipe.loader:RecipeError",
    "rmrun.data.formats:DataError",
    "rmrun.model.model:ModelError",
    "rmrun.train.trainer:NonFiniteLoss",
    "rmrun.serve.exported:ScoreError",
    "rmrun.report.report:ReportError",
    "rmrun.bench.bench:BenchError",
)
UNUSABLE_ERRORS = ("rmrun.store.errors:StoreError", "rmrun.runtime.process:ScratchFull")
STOP_ERRORS = ("rmrun.runtime.process:StopRequested",)  # Preempted and Stopped
UNREACHABLE_ERRORS = ("rmrun.store.errors:StoreUnreachable",)


class UsageError(Exception):
    """A usage problem a command found itself (exit 2); ``lines`` are printed."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


class StateUnusable(Exception):
    """The state's storage failed (an ``OSError`` the command has worded): exit 3."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


class StoppedBeforeStart(Exception):
    """A stop signal before the run had read its recipe: nothing started, requeue (exit 75)."""


class Worded(Exception):
    """``cause``, worded by the command that met it; its exit code is still ``cause``'s, with
    ``requeue`` the code a requeue takes in this command (a run's ``run.preempted_exit_code``)."""

    def __init__(self, cause: BaseException, lines: list[str] | None = None, *, requeue: int | None = None):
        self.cause = cause
        self.lines = lines
        self.requeue = requeue
        super().__init__(str(cause))


def _is(exc: BaseException, names: tuple[str, ...]) -> bool:
    for name in names:
        module, _, cls = name.partition(":")
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, cls)):
            return True
    return False


def exit_code(exc: BaseException, *, requeue: int | None = None) -> int:
    """The exit code for ``exc``; ``requeue``: the code a requeue takes (None outside a run:
    then an unreachable store is an unusable state, and a stop signal requeues with 75)."""
    if isinstance(exc, Worded):
        return exit_code(exc.cause, requeue=exc.requeue)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return EXIT_OK  # the reader of the output went away: nothing more to say, and no error
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, StateUnusable):
        return EXIT_UNUSABLE
    if isinstance(exc, StoppedBeforeStart):
        return EXIT_PREEMPTED
    if _is(exc, STOP_ERRORS):
        if getattr(exc, "signum", None) == signal.SIGINT:
            return EXIT_INTERRUPTED
        return EXIT_PREEMPTED if requeue is None else requeue
    if requeue is not None and _is(exc, UNREACHABLE_ERRORS):
        return requeue
    if _is(exc, USAGE_ERRORS):
        return EXIT_USAGE
    if _is(exc, UNUSABLE_ERRORS):
        return EXIT_UNUSABLE
    return EXIT_FAILED


def message(exc: BaseException, *, requeue: int | None = None) -> list[str]:
    """What ``rmrun:`` says about ``exc``, a line each (a bug's traceback is not here)."""
    if isinstance(exc, Worded):
        return exc.lines if exc.lines is not None else message(exc.cause, requeue=exc.requeue)
    if isinstance(exc, (UsageError, StateUnusable)):
        return exc.lines
    if isinstance(exc, KeyboardInterrupt):
        return ["interrupted"]
    if isinstance(exc, StoppedBeforeStart):
        return [f"{exc}; exit {EXIT_PREEMPTED}: run the same command again"]
    code = exit_code(exc, requeue=requeue)
    if _is(exc, STOP_ERRORS) or (requeue is not None and _is(exc, UNREACHABLE_ERRORS)):
        return [f"{exc}; exit {code}: run the same command again to resume"]
    problems = getattr(exc, "problems", None)  # a RecipeError's list
    if isinstance(problems, list) and _is(exc, USAGE_ERRORS):
        return [str(p) for p in problems]
    return [str(exc)]


def fail(exc: BaseException) -> int:
    """Say what ``exc`` means on stderr and return its exit code: a bug prints its traceback,
    a reader gone away (broken pipe) nothing."""
    code = exit_code(exc)
    if code == EXIT_FAILED:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    elif isinstance(exc, BrokenPipeError):
        from rmrun.runtime.process import discard_output

        discard_output(sys.stdout)
    else:
        for line in message(exc):
            print(f"rmrun: {line}", file=sys.stderr)
    return code
