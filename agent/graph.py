"""The personal agent: ``recall → respond → remember → adapt`` as a LangGraph ``StateGraph``.

``build_graph`` returns the uncompiled builder (use it as a subgraph, or compile it with your own
checkpointer and store); :class:`PersonalAgent` compiles it with a checkpointer and offers
``chat``/``stream`` per user and session.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langgraph.graph import END, START, StateGraph

from agent.nodes import (
    Context,
    MemoryState,
    make_adapt_node,
    make_recall_node,
    make_remember_node,
    make_respond_node,
)
from agent.policy import DefaultPolicy, UpdatePolicy, UpdateWorker
from agent.prompt import PromptBudget

if TYPE_CHECKING:  # pragma: no cover
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from memory import ChangeEvent, Memory
    from memory.retrieval import Recollection

__all__ = ["build_graph", "PersonalAgent", "TurnResult", "make_checkpointer", "checkpoint_serde", "forget_threads",
           "user_threads"]

log = logging.getLogger(__name__)

# Our records travel in the checkpointed state; tell LangGraph's serializer they are expected.
_STATE_TYPES = [
    ("memory.records", name) for name in
    ("Episode", "Fact", "FactAdded", "FactSuperseded", "FactRetracted", "PreferenceDrift", "StyleDrift")
] + [("memory.retrieval", name) for name in ("Recollection", "ScoredEpisode", "ScoredFact", "ScoredSummary")]


def checkpoint_serde() -> Any:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=_STATE_TYPES)


def make_checkpointer(home: Path, postgres_url: str | None = None) -> "BaseCheckpointSaver":
    """SQLite under ``home`` by default; Postgres when a URL is configured."""
    if postgres_url:
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError as exc:
            raise RuntimeError("a Postgres checkpointer was configured (PLLM_POSTGRES_URL) but "
                               "langgraph-checkpoint-postgres is not installed: pip install langgraph-checkpoint-postgres") from exc
        saver = PostgresSaver.from_conn_string(postgres_url).__enter__()  # noqa: PLC2801 - long-lived
        saver.setup()
        return saver
    from langgraph.checkpoint.sqlite import SqliteSaver

    home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(home / "checkpoints.sqlite"), check_same_thread=False)
    return SqliteSaver(conn, serde=checkpoint_serde())


def user_threads(saver: "BaseCheckpointSaver", user_id: str) -> list[str]:
    """The thread ids of ``user_id`` in ``saver`` (threads are named ``"{user_id}:{session_id}"``)."""
    prefix = f"{user_id}:"
    return sorted({c.config["configurable"]["thread_id"] for c in saver.list(None)
                   if c.config["configurable"]["thread_id"].startswith(prefix)})


def forget_threads(saver: "BaseCheckpointSaver", user_id: str) -> int:
    """Delete every conversation thread of ``user_id``; returns how many."""
    threads = user_threads(saver, user_id)
    for thread in threads:
        saver.delete_thread(thread)
    return len(threads)


def build_graph(memory: "Memory", chat_model: BaseChatModel, *, count_tokens: Callable[[str], int],
                policy: UpdatePolicy | None = None, worker: UpdateWorker | None = None,
                budget: PromptBudget | None = None) -> StateGraph:
    """The personal graph, uncompiled: ``START → recall → respond → remember → adapt → END``."""
    worker = worker or UpdateWorker(clock=memory.clock)
    builder = StateGraph(MemoryState, context_schema=Context)
    builder.add_node("recall", make_recall_node(memory))
    builder.add_node("respond", make_respond_node(chat_model, count_tokens=count_tokens, budget=budget,
                                                  now=memory.clock.now))
    builder.add_node("remember", make_remember_node(memory))
    builder.add_node("adapt", make_adapt_node(policy or DefaultPolicy(), worker, now=memory.clock.now))
    builder.add_edge(START, "recall")
    builder.add_edge("recall", "respond")
    builder.add_edge("respond", "remember")
    builder.add_edge("remember", "adapt")
    builder.add_edge("adapt", END)
    return builder


@dataclass(frozen=True)
class TurnResult:
    reply: str
    prompt: list[BaseMessage]
    recollection: "Recollection | None"
    events: list["ChangeEvent"] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class PersonalAgent:
    """A compiled personal graph with a checkpointer: one thread per (user, session)."""

    def __init__(self, memory: "Memory", chat_model: BaseChatModel, *, checkpointer: "BaseCheckpointSaver | None" = None,
                 policy: UpdatePolicy | None = None, worker: UpdateWorker | None = None,
                 budget: PromptBudget | None = None, count_tokens: Callable[[str], int] | None = None) -> None:
        from agent.chat_model import PllmChatModel

        self.memory = memory
        self.chat_model = chat_model
        self.model_level = isinstance(chat_model, PllmChatModel)
        if count_tokens is None:
            count_tokens = chat_model.local.count_tokens if self.model_level else _approx_tokens
        if not self.model_level:
            log.info("chat model %s is not pllm's local model: only input-level personalization "
                     "(profile + retrieval in the prompt) applies", type(chat_model).__name__)
        self.worker = worker or UpdateWorker(clock=memory.clock)
        builder = build_graph(memory, chat_model, count_tokens=count_tokens, policy=policy, worker=self.worker,
                              budget=budget)
        if checkpointer is None:
            from langgraph.checkpoint.memory import InMemorySaver

            checkpointer = InMemorySaver(serde=checkpoint_serde())
        self.graph = builder.compile(checkpointer=checkpointer)

    def describe(self) -> str:
        if self.model_level:
            return "personalization: input level (profile + retrieval) and model level (local model)"
        return ("personalization: input level only (profile + retrieval in the prompt); model-level "
                "personalization needs pllm's local model")

    @staticmethod
    def thread_id(user_id: str, session_id: str) -> str:
        return f"{user_id}:{session_id}"

    def _run_args(self, user_id: str, text: str, session_id: str) -> tuple[dict[str, Any], dict[str, Any], Context]:
        config = {"configurable": {"thread_id": self.thread_id(user_id, session_id)}}
        return {"messages": [HumanMessage(text)]}, config, Context(user_id=user_id, session_id=session_id)

    def stream(self, user_id: str, text: str, *, session_id: str = "default") -> Iterator[str]:
        """Yield the reply as it is generated; memory is updated when the iterator is exhausted."""
        state, config, ctx = self._run_args(user_id, text, session_id)
        for chunk, meta in self.graph.stream(state, config, context=ctx, stream_mode="messages"):
            # Only the model's token chunks; the node's returned messages (prompt, full reply) are skipped.
            if isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "respond" and chunk.content:
                yield str(chunk.content)

    def chat(self, user_id: str, text: str, *, session_id: str = "default") -> TurnResult:
        """Run one turn to completion and return the reply with what went into it."""
        state, config, ctx = self._run_args(user_id, text, session_id)
        out = self.graph.invoke(state, config, context=ctx)
        return TurnResult(reply=str(out["messages"][-1].content), prompt=out.get("prompt", []),
                          recollection=out.get("recollection"), events=out.get("events", []), jobs=out.get("jobs", []))

    def threads(self, user_id: str) -> list[str]:
        """The checkpointed conversation threads of ``user_id``."""
        return user_threads(self.graph.checkpointer, user_id)  # type: ignore[arg-type]

    def forget(self, user_id: str) -> dict[str, int]:
        """Erase the user everywhere: memory (episodes, facts, graph log) and their conversation threads."""
        removed = self.memory.forget(user_id)
        return {**removed, "threads": forget_threads(self.graph.checkpointer, user_id)}  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the update worker and close the checkpointer's connection (if it has one)."""
        self.worker.close()
        conn = getattr(self.graph.checkpointer, "conn", None)
        if conn is not None and hasattr(conn, "close"):
            conn.close()

    def last_turn(self, user_id: str, session_id: str = "default") -> dict[str, Any]:
        """The thread's checkpointed state (messages, last prompt, last recollection, events)."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": self.thread_id(user_id, session_id)}})
        return dict(snapshot.values)
