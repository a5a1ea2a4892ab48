"""Errors the applications raise for bad input; the CLI turns them into a one-line message."""


class CurateError(Exception):
    """Bad input or state for a curate application (budget, target, output folder, task)."""
