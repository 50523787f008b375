"""The ``rmrun`` command line: ``rmrun.cli.main`` (the parser, ``main(argv)``, ``entry``) and one
module per subcommand. ``rmrun.cli:entry`` is the console script's name for ``main.entry``."""

from __future__ import annotations


def entry() -> None:
    from rmrun.cli.main import entry as cli_entry

    cli_entry()


def main(argv: list[str] | None = None) -> int:
    from rmrun.cli.main import main as cli_main

    return cli_main(argv)
