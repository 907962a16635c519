"""pllm agent: the LangGraph personal agent, the chat-model adapter, the CLI.

Importing this package does no I/O: public names are resolved lazily on first access (some of the
libraries behind them probe the network stack when imported).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from agent.chat_model import PllmChatModel, to_chat_turns
    from agent.graph import PersonalAgent, TurnResult, build_graph, make_checkpointer
    from agent.nodes import (
        Context,
        MemoryState,
        make_adapt_node,
        make_recall_node,
        make_remember_node,
        make_respond_node,
    )
    from agent.policy import DefaultPolicy, Job, UpdatePolicy, UpdateWorker
    from agent.prompt import PromptBudget, build_prompt
    from agent.settings import Settings
    from agent.stack import Stack, build_stack

_EXPORTS = {
    "PllmChatModel": "agent.chat_model",
    "to_chat_turns": "agent.chat_model",
    "PersonalAgent": "agent.graph",
    "TurnResult": "agent.graph",
    "build_graph": "agent.graph",
    "make_checkpointer": "agent.graph",
    "Context": "agent.nodes",
    "MemoryState": "agent.nodes",
    "make_recall_node": "agent.nodes",
    "make_remember_node": "agent.nodes",
    "make_respond_node": "agent.nodes",
    "make_adapt_node": "agent.nodes",
    "DefaultPolicy": "agent.policy",
    "Job": "agent.policy",
    "UpdatePolicy": "agent.policy",
    "UpdateWorker": "agent.policy",
    "PromptBudget": "agent.prompt",
    "build_prompt": "agent.prompt",
    "Settings": "agent.settings",
    "Stack": "agent.stack",
    "build_stack": "agent.stack",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
