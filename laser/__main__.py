"""`python -m laser ...` is the `laser` command."""

from .run.cli import entry

entry()
