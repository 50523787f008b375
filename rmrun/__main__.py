from rmrun.cli import entry

entry()
