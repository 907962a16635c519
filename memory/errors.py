"""Errors of the memory layer.

::

    PllmMemoryError
    ├── InvalidInput        bad text, wrong type, bad time, unknown key: nothing was written
    ├── UnknownUser         an operation that needs stored data found none for that user
    ├── EmbedderUnavailable the packaged embedding model is not installed or cannot load
    └── StoreError          the backing store (Chroma, SQLite) failed; the turn was rolled back
        ├── HomeInUse       another process holds the home's writer lock (embedded Chroma allows one writer)
        └── ReadOnlyMemory  a write was asked of a Memory opened with ``read_only=True``
"""

from __future__ import annotations

__all__ = [
    "PllmMemoryError",
    "InvalidInput",
    "UnknownUser",
    "EmbedderUnavailable",
    "StoreError",
    "HomeInUse",
    "ReadOnlyMemory",
]


class PllmMemoryError(Exception):
    """Base class of every error raised by ``memory``."""


class InvalidInput(PllmMemoryError, ValueError):
    """The caller passed something pllm cannot store; the message says what and how to fix it."""


class UnknownUser(PllmMemoryError, KeyError):
    """No data is stored for this user."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown user"


class EmbedderUnavailable(PllmMemoryError, RuntimeError):
    """The embedding model could not be loaded."""


class StoreError(PllmMemoryError, RuntimeError):
    """A backing store failed; the operation was rolled back."""


class HomeInUse(StoreError):
    """Another process has this memory home open for writing; the message names it and says what to do."""


class ReadOnlyMemory(StoreError):
    """This ``Memory`` was opened read-only; nothing was written."""
