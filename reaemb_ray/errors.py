"""Errors that blame the input, not the code.

An `InputError` says in one line what is wrong (naming the config key or the file, with the line) and how to
fix it; the CLI prints that line and no traceback (`--debug` shows it). Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names the key or the file and the fix."""


class ConfigError(InputError):
    """A configuration problem; the message names the key and the fix."""


class DataError(InputError):
    """A problem in a dataset file; the message names the file (and line) and the fix."""
