"""Assemble the whole pllm stack from settings: model, memory, checkpointer, thread registry, agent.

One function so the CLI, the demos, the scenario runner and the benches build the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.language_models import BaseChatModel
    from langgraph.store.base import BaseStore

    from agent.capabilities import Capabilities
    from agent.graph import PersonalAgent
    from agent.lifecycle import UserData
    from agent.model_level import ModelWorkspace
    from agent.policy import Handler, UpdateWorker
    from editing import GenerationSettings, LocalModel
    from memory import Clock, Embedder, MemoryConfig
    from memory.service import Memory

__all__ = ["Stack", "build_stack", "MODEL_HANDLERS", "register_model_handlers", "stack_capabilities"]

log = logging.getLogger(__name__)

def _knowledge_edit(workspace: "ModelWorkspace") -> "Handler":
    from agent.model_level import knowledge_edit_handler

    return knowledge_edit_handler(workspace)


def _preference_weights(workspace: "ModelWorkspace") -> "Handler":
    from agent.model_level import preference_handler

    return preference_handler(workspace)


def _adapter_refresh(workspace: "ModelWorkspace") -> "Handler":
    from agent.adapter_level import AdapterRefresher

    s = workspace.settings
    return AdapterRefresher(workspace, refresh_every=s.adapter_refresh_every, watch_style=s.style_watch)


# Model-level job handlers the stack registers on its update worker (when ``settings.model_updates``): job
# kind → factory building the handler from the stack's :class:`~agent.model_level.ModelWorkspace` (the local
# model, memory, settings and the private model copy the handlers share); also what :func:`stack_capabilities`
# reports.
MODEL_HANDLERS: Mapping[str, Callable[["ModelWorkspace"], "Handler"]] = {
    "knowledge_edit": _knowledge_edit,
    "preference_weights": _preference_weights,
    "adapter_refresh": _adapter_refresh,
}


def register_model_handlers(worker: "UpdateWorker", local: "LocalModel", memory: "Memory", settings: Settings) -> None:
    """Register :data:`MODEL_HANDLERS` on ``worker`` over one shared workspace, and queue a from-scratch
    refresh for every user whose style adapter was made on another base model."""
    from agent.model_level import ModelWorkspace
    from agent.policy import Job

    workspace = ModelWorkspace(local, memory, settings)
    for kind, factory in MODEL_HANDLERS.items():
        worker.register(kind, factory(workspace))  # type: ignore[arg-type]
    refresher = worker.handlers.get("adapter_refresh")
    stale = refresher.stale_users() if hasattr(refresher, "stale_users") else []
    if stale:  # read the clock only when needed: a scenario's manual clock must not move before its first session
        now = memory.clock.now()
        worker.submit([Job("adapter_refresh", user, (), now, summary=(f"the base model is now {local.model_id}: "
                                                                     "retrain the style adapter",)) for user in stale])


@dataclass
class Stack:
    settings: Settings
    memory: "Memory"
    agent: "PersonalAgent"
    local: "LocalModel | None"  # None when another chat model was passed

    @property
    def user_data(self) -> "UserData":
        """The registry of everything held about a user (export / import / forget)."""
        return self.agent.user_data

    def close(self) -> None:
        self.agent.close()  # stops the update worker (a job in progress finishes first)
        if self.agent.worker.store is not None:
            self.agent.worker.store.close()
        self.memory.close()
        if self.local is not None:
            self.local.close()  # an engine process, if one was started


def build_stack(settings: Settings, *, clock: "Clock | None" = None, local: "LocalModel | None" = None,
                chat_model: "BaseChatModel | None" = None, embedder: "Embedder | None" = None,
                generation: "GenerationSettings | None" = None, memory_config: "MemoryConfig | None" = None,
                store: "BaseStore | None" = None) -> Stack:
    """Build memory + agent under ``settings.home``; load the local model unless one (or another chat model)
    is given. ``store``: a LangGraph store compiled into the graph, its ``("users", user_id)`` namespaces
    part of each user's data."""
    from agent.chat_model import PllmChatModel
    from agent.graph import PersonalAgent, close_checkpointer, open_threads
    from agent.jobs import JobStore
    from agent.model_level import ModelPart, adapter_store, pole_store
    from agent.policy import UpdateWorker
    from editing import LocalModel
    from editing.alignment.mod import PoleFusion
    from memory.service import Memory

    # First: an unreachable PLLM_POSTGRES_URL fails at once, before the memory is opened or the model loaded.
    checkpointer, threads = open_threads(settings.home, settings.postgres_url)

    def close_threads() -> None:
        close_checkpointer(checkpointer)
        threads.close()

    try:
        if embedder is None:  # embeddings on the compute thread the chat model decodes on (editing.compute)
            from editing.compute import COMPUTE
            from memory.embeddings import MiniLMEmbedder

            embedder = MiniLMEmbedder(runner=lambda fn, texts: COMPUTE.call(fn, texts, short=True))
        memory = Memory(memory_config or settings.memory_config(), clock=clock, embedder=embedder)
    except BaseException:
        close_threads()
        raise
    try:
        if chat_model is None:
            local = local or LocalModel.load(settings.runtime_config())
            chat_model = PllmChatModel(local=local, settings=generation or settings.generation(),
                                       adapters=adapter_store(settings.home), fusion=PoleFusion(pole_store(settings)))
    except BaseException:
        close_threads()
        memory.close()
        raise
    jobs = JobStore.under(settings.home)
    worker = UpdateWorker(clock=memory.clock, store=jobs, outbox=memory.graph.log_after)
    agent = PersonalAgent(memory, chat_model, checkpointer=checkpointer, threads=threads, store=store, worker=worker)
    agent.user_data.register(ModelPart(settings.home, jobs))
    if isinstance(chat_model, PllmChatModel) and not settings.model_updates:
        agent.capability_note = MODEL_UPDATES_OFF
    if isinstance(chat_model, PllmChatModel) and settings.model_updates:
        register_model_handlers(agent.worker, chat_model.local, memory, settings)
    return Stack(settings=settings, memory=memory, agent=agent, local=local if isinstance(chat_model, PllmChatModel) else None)


MODEL_UPDATES_OFF = ("model updates are turned off (PLLM_MODEL_UPDATES=0 / Settings.model_updates=False): "
                     "set PLLM_MODEL_UPDATES=1 to write each user's facts into their own model")


def stack_capabilities(settings: Settings | None = None) -> "Capabilities":
    """What :func:`build_stack` with pllm's local model offers under ``settings``, without building anything
    (for ``pllm info``)."""
    from agent.capabilities import capabilities_of

    on = settings.model_updates if settings is not None else Settings.model_fields["model_updates"].default
    return capabilities_of(local_model=True, chat_model="PllmChatModel", handler_kinds=MODEL_HANDLERS if on else (),
                           off_reason=None if on else MODEL_UPDATES_OFF)
