from namespacefs.cli import entry

entry()
