"""pllm agent: the LangGraph personal agent, the chat-model adapter, the CLI.

Importing this package does no I/O: public names are resolved lazily on first access (some of the
libraries behind them probe the network stack when imported).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agent.chat_model import PllmChatModel, to_chat_turns
    from agent.settings import Settings

_EXPORTS = {
    "PllmChatModel": "agent.chat_model",
    "to_chat_turns": "agent.chat_model",
    "Settings": "agent.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
