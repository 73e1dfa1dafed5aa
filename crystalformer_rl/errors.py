"""Errors a user can fix from the message alone; a neutral module every layer may import."""

from __future__ import annotations


class UsageError(ValueError):
    """A bad input the user can fix: the command line prints it as one line and exits with status 2."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
