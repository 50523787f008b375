"""``rmrun status TARGET``: the step graph and the state store of a run."""

from __future__ import annotations

from rmrun.cli.args import add_set


def add(sub) -> None:
    p = sub.add_parser("status", help="show the step graph and the state store of a run")
    p.add_argument("target", help="recipe TOML file or state URL")
    add_set(p)
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.run.commands import status

    return status(args.target, overrides=args.overrides)
