"""The one map from an exception to rmrun's exit code and its one-line message.

Commands raise; the CLI (``rmrun.cli.main``) turns whatever reaches it into an exit code
here, for every command. :data:`EXIT_CODES` says what each code means and what a scheduler
should do with it; ``rmrun --help`` and the manual's exit-code table are made from it.

Its top imports no other rmrun module: an exception class is looked up only in a
module already imported (an exception of a class never imported cannot have been raised),
so mapping a recipe error does not import torch.
"""

from __future__ import annotations

import signal
import sys
import traceback
from typing import NamedTuple

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNUSABLE = 3
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


class ExitCode(NamedTuple):
    code: int
    brief: str  # for ``rmrun --help``
    meaning: str
    scheduler: str  # what a scheduler should do on it


EXIT_CODES = (
    ExitCode(
        EXIT_OK,
        "done",
        'done (also: "run is complete" when started again after finishing; and a command whose output\'s '
        "reader went away, such as `rmrun status | head`)",
        "stop",
    ),
    ExitCode(EXIT_FAILED, "a bug in rmrun", "a bug in rmrun (a traceback is printed)", "report it"),
    ExitCode(
        EXIT_USAGE,
        "recipe, data or usage error (never retry)",
        "user error: bad recipe, bad data row or file, empty training set, a location that cannot be written, "
        "an unknown URL protocol, a model whose code is not trusted, a diverging loss",
        "never retry as is",
    ),
    ExitCode(
        EXIT_UNUSABLE,
        "state unusable (needs a human)",
        "state unusable, needs a human: every checkpoint quarantined, disk full, a read-only or vanished state "
        "store, the lease lost to another writer, a state written by a newer rmrun (upgrade; nothing in it is "
        "changed), local scratch (`TMPDIR`) too small for a checkpoint's snapshot",
        "not retry; alert",
    ),
    ExitCode(
        EXIT_PREEMPTED,
        "stopped by SIGTERM or an unreachable store, nothing committed lost (requeue; run.preempted_exit_code)",
        "stopped, nothing committed lost: by SIGTERM/SIGUSR1 (in training after committing a checkpoint; "
        "before or after training at once), or by a state store that did not answer for "
        "`run.store_retry_seconds`; a run exits with `run.preempted_exit_code`, 75 by default",
        "requeue the same command",
    ),
    ExitCode(
        EXIT_INTERRUPTED,
        "stopped by Ctrl-C",
        "stopped by Ctrl-C (SIGINT), as by SIGTERM; a second Ctrl-C stops at once",
        "\N{EM DASH}",
    ),
)


def exit_codes_markdown() -> str:
    """:data:`EXIT_CODES` as a Markdown table, a row per code (anchors ``exit-<code>``)."""
    rows = ["| code | meaning | the scheduler should |", "|---|---|---|"]
    rows += [f"| **{e.code}**{{#exit-{e.code}}} | {e.meaning} | {e.scheduler} |" for e in EXIT_CODES]
    return "\n".join(rows) + "\n"


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
