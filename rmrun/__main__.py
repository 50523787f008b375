from rmrun.cli.main import entry

entry()
