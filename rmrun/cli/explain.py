"""``rmrun explain``: document every recipe key."""

from __future__ import annotations

from rmrun.errors import EXIT_OK


def add(sub) -> None:
    sub.add_parser("explain", help="document every recipe key").set_defaults(func=command)


def command(args) -> int:
    from rmrun.recipe.explain import explain_text

    print(explain_text())
    return EXIT_OK
