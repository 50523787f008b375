"""``rmrun explain [KEY...]``: document every recipe key, or the tables and keys named."""

from __future__ import annotations

from rmrun.errors import EXIT_OK, UsageError


def add(sub) -> None:
    p = sub.add_parser("explain", help="document every recipe key (or the tables and keys named)")
    p.add_argument("keys", nargs="*", metavar="KEY", help="a table (data, data.sources) or a key (data.pair_rule)")
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.recipe.explain import explain_text

    try:
        print(explain_text(args.keys))
    except ValueError as e:
        raise UsageError([str(e)]) from None
    return EXIT_OK
