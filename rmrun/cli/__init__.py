"""The ``rmrun`` command line: ``rmrun.cli.main`` (``entry``, the console script; ``main(argv)``), one module per subcommand."""
