"""`python -m laser.cli ...` is the `laser` command (as `python -m laser`)."""

from . import entry

entry()
