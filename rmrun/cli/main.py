"""The ``rmrun`` command: parse, run the subcommand, turn what it raises into an exit code.

This is the only place that calls ``sys.exit``. Each subcommand is a module of this
package that adds its parser and sets ``func``; ``rmrun.errors`` maps whatever a command
raises to the exit code and the ``rmrun:`` line (the codes: ``rmrun.errors.EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from rmrun.cli import bench, check, explain, init, report, run, score, status, verify_resume
from rmrun.cli.args import recipe_keys_help
from rmrun.errors import EXIT_CODES, fail

# In the order of `rmrun --help`; score.py adds score and eval.
SUBCOMMANDS = (run, check, status, explain, init, verify_resume, score, report, bench)
COMMANDS = ("run", "check", "status", "explain", "init", "verify-resume", "score", "eval", "report", "bench")


def _exit_codes_help() -> str:
    codes = ", ".join(f"{e.code} {e.brief}" for e in EXIT_CODES)
    return textwrap.fill(f"Exit codes: {codes}. `rmrun explain` prints the recipe keys below.", width=100)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmrun",
        description="Train reward models for RLHF from a TOML recipe, resumable exactly after preemption.",
        epilog=_exit_codes_help() + "\n\n" + recipe_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add(sub)
    return parser


def _argv(argv: list[str]) -> list[str]:
    # `rmrun RECIPE` is `rmrun run RECIPE`.
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        return ["run", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    try:  # the parser too: its help text is built from the recipe schema
        args = _parser().parse_args(_argv(list(sys.argv[1:] if argv is None else argv)))
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        return fail(e)


def entry() -> None:
    from rmrun.runtime.process import configure_process, discard_output

    configure_process()
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # what was still buffered has no reader any more
        discard_output(sys.stdout)
    # Skip interpreter teardown of ColossalAI/torch threads after a clean close.
    sys.exit(code)


if __name__ == "__main__":
    entry()
