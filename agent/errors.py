"""Errors of the agent layer, and the tuple of every pllm error a front end should catch.

::

    AgentError
    ├── InvalidTurn        a refused message, user id or session id; nothing was written anywhere
    ├── InvalidDocument    a user-data export document that cannot be imported; nothing was written
    ├── NoUserData         an export of a user of whom nothing is stored
    ├── UserDataError      one or more parts of the user-data registry failed (export/import/forget);
    │                      says which parts, with what, and what the other parts did
    └── CheckpointerUnavailable  the configured conversation-thread store (PLLM_POSTGRES_URL) cannot be
                           reached or set up; says why and what to do

``PLLM_ERRORS`` = ``(AgentError, memory.PllmMemoryError, editing.EditingError)``: what a chat loop or a
server catches to report an error to the user and carry on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memory.errors import PllmMemoryError

__all__ = ["AgentError", "InvalidTurn", "InvalidDocument", "NoUserData", "UserDataError", "CheckpointerUnavailable",
           "PLLM_ERRORS"]


class AgentError(Exception):
    """Base class of every error raised by ``agent``."""


class InvalidTurn(AgentError, ValueError):
    """A turn refused before the graph ran: the thread, the memory and the model saw nothing of it.

    The memory layer's validation error is chained as ``__cause__``.
    """


class InvalidDocument(AgentError, ValueError):
    """A user-data export document that this pllm cannot import as given."""


class NoUserData(AgentError, LookupError):
    """Nothing is stored about the user in any part."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "no data is stored for this user"


class UserDataError(AgentError, RuntimeError):
    """Some parts of the user-data registry failed; ``failures`` maps each failed part to its error and
    ``done`` holds what the parts that succeeded returned (their counts, for a forget)."""

    def __init__(self, message: str, *, failures: Mapping[str, BaseException], done: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.failures = dict(failures)
        self.done = dict(done)


class CheckpointerUnavailable(AgentError, RuntimeError):
    """The configured checkpointer (Postgres, ``PLLM_POSTGRES_URL``) cannot be used: not installed, not
    reachable, a malformed URL, or its tables cannot be created. The driver's error is chained as ``__cause__``."""


def __getattr__(name: str) -> Any:
    # PLLM_ERRORS is resolved on first use: importing ``editing`` (even only editing.errors) imports torch,
    # which code that only needs InvalidTurn (the graph, `pllm memory ...`) should not pay for.
    if name == "PLLM_ERRORS":
        from editing.errors import EditingError

        value: tuple[type[Exception], ...] = (AgentError, PllmMemoryError, EditingError)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
