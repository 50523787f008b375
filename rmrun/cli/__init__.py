"""The ``rmrun`` command line: ``entry`` is the console script, ``main(argv)`` its in-process form."""

from rmrun.cli.main import entry, main

__all__ = ["entry", "main"]
