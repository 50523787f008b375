"""What several subcommands' parsers share: ``--set`` and the recipe keys' help."""

from __future__ import annotations

import argparse


def recipe_keys_help() -> str:
    from rmrun.recipe.explain import explain_text

    return "recipe keys:\n" + explain_text()


def add_set(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable), into ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_recipe_command(sub, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand of one recipe file, with ``--set`` and the recipe keys in its help."""
    p = sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=recipe_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe TOML file")
    add_set(p, help="override a recipe key, e.g. --set schedule.lr=1e-5 (repeatable)")
    return p
