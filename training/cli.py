"""Subcommands of this package (see analysis/cli.py for the dispatcher)."""


def register(sub) -> None:
    pass
