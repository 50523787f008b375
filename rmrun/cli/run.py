"""``rmrun run RECIPE`` (also ``rmrun RECIPE``): run the recipe's step graph."""

from __future__ import annotations

from rmrun.cli.args import add_recipe_command


def add(sub) -> None:
    p = add_recipe_command(
        sub, "run", "run the recipe's step graph (resumes from the state store if it has a checkpoint)"
    )
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.run.commands import run

    return run(args.recipe, overrides=args.overrides)
