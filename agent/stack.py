"""Assemble the whole pllm stack from settings: model, memory, checkpointer, agent.

One function so the CLI, the demos, the scenario runner and the benches build the same thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.language_models import BaseChatModel

    from agent.graph import PersonalAgent
    from editing import GenerationSettings, LocalModel
    from memory import Clock, Embedder, MemoryConfig
    from memory.service import Memory

__all__ = ["Stack", "build_stack"]

log = logging.getLogger(__name__)


@dataclass
class Stack:
    settings: Settings
    memory: "Memory"
    agent: "PersonalAgent"
    local: "LocalModel | None"  # None when another chat model was passed

    def close(self) -> None:
        self.agent.close()
        self.memory.close()


def build_stack(settings: Settings, *, clock: "Clock | None" = None, local: "LocalModel | None" = None,
                chat_model: "BaseChatModel | None" = None, embedder: "Embedder | None" = None,
                generation: "GenerationSettings | None" = None,
                memory_config: "MemoryConfig | None" = None) -> Stack:
    """Build memory + agent under ``settings.home``; load the local model unless one (or another chat model) is given."""
    from agent.chat_model import PllmChatModel
    from agent.graph import PersonalAgent, make_checkpointer
    from editing import LocalModel
    from memory.service import Memory

    memory = Memory(memory_config or settings.memory_config(), clock=clock, embedder=embedder)
    if chat_model is None:
        local = local or LocalModel.load(settings.runtime_config())
        chat_model = PllmChatModel(local=local, settings=generation or settings.generation())
    checkpointer = make_checkpointer(settings.home, settings.postgres_url)
    agent = PersonalAgent(memory, chat_model, checkpointer=checkpointer)
    return Stack(settings=settings, memory=memory, agent=agent, local=local if isinstance(chat_model, PllmChatModel) else None)
