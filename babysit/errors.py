"""Errors every part may raise: a neutral place, so the trainer need not import the CLI to report bad input."""

__all__ = ["UsageError"]


class UsageError(Exception):
    """A bad argument or input: the CLI prints it as one line and exits with status 2."""
