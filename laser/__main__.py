"""`python -m laser ...` is the `laser` command."""

from .cli import entry

entry()
