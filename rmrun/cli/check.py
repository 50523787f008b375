"""``rmrun check RECIPE``: validate the recipe and print the resolved plan."""

from __future__ import annotations

from rmrun.cli.args import add_recipe_command


def add(sub) -> None:
    p = add_recipe_command(
        sub, "check", "validate the recipe and print the resolved plan; no training, no torch import"
    )
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.run.commands import check

    return check(args.recipe, overrides=args.overrides)
