"""pllm agent: the LangGraph personal agent, the chat-model adapter, the CLI.

Importing this package does no I/O: public names are resolved lazily on first access (some of the
libraries behind them probe the network stack when imported).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from agent.capabilities import Capabilities
    from agent.chat_model import PllmChatModel, to_chat_turns
    from agent.errors import (
        PLLM_ERRORS,
        AgentError,
        CheckpointerUnavailable,
        InvalidDocument,
        InvalidTurn,
        NoUserData,
        UserDataError,
    )
    from agent.graph import PersonalAgent, TurnResult, build_graph, make_checkpointer
    from agent.lifecycle import MemoryPart, StorePart, ThreadsPart, UserData, UserDataPart, open_user_data
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
    from agent.stack import Stack, build_stack, stack_capabilities
    from agent.threads import ThreadRegistry, thread_id_for

_EXPORTS = {
    "Capabilities": "agent.capabilities",
    "AgentError": "agent.errors",
    "CheckpointerUnavailable": "agent.errors",
    "InvalidDocument": "agent.errors",
    "InvalidTurn": "agent.errors",
    "NoUserData": "agent.errors",
    "UserDataError": "agent.errors",
    "PLLM_ERRORS": "agent.errors",
    "MemoryPart": "agent.lifecycle",
    "StorePart": "agent.lifecycle",
    "ThreadsPart": "agent.lifecycle",
    "UserData": "agent.lifecycle",
    "UserDataPart": "agent.lifecycle",
    "open_user_data": "agent.lifecycle",
    "ThreadRegistry": "agent.threads",
    "thread_id_for": "agent.threads",
    "stack_capabilities": "agent.stack",
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
