"""The memory nodes and the respond node, usable in anyone's LangGraph ``StateGraph``.

Each factory closes over its collaborator (the ``Memory``, the chat model) and returns a node function
``(state, runtime) -> update``. The user comes from the run's context: any object with a ``user_id``
attribute (pllm's :class:`Context`) or a mapping with a ``"user_id"`` key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime

from agent.prompt import BuiltPrompt, PromptBudget, PromptLayout, build_prompt

from memory.records import ChangeEvent
from memory.retrieval import Recollection

if TYPE_CHECKING:  # pragma: no cover
    from agent.policy import UpdatePolicy, UpdateWorker
    from memory.service import Memory

__all__ = ["Context", "MemoryState", "make_recall_node", "make_respond_node", "make_remember_node", "make_adapt_node",
           "user_of", "session_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Per-run identity, read by every node through LangGraph's ``Runtime``."""

    user_id: str
    session_id: str = "default"
    generation: Any = None  # an editing.GenerationSettings for this turn only (pllm's local model); None: the model's own


class MemoryState(TypedDict, total=False):
    """The state keys pllm's nodes read and write (add them to your own state to embed the nodes)."""

    messages: Annotated[list[BaseMessage], add_messages]
    recollection: Recollection | None
    prompt: list[BaseMessage]
    events: list[ChangeEvent]
    jobs: list[str]
    reply_id: str | None  # the stored assistant reply of the last turn (what ``Memory.rate`` takes)


def user_of(runtime: Runtime[Any]) -> str:
    ctx = runtime.context
    user = getattr(ctx, "user_id", None) if not isinstance(ctx, dict) else ctx.get("user_id")
    if not user:
        raise ValueError("the run has no user: invoke the graph with context=Context(user_id=...) "
                         "(or a context object/dict that has user_id)")
    return str(user)


def session_of(runtime: Runtime[Any]) -> str:
    ctx = runtime.context
    value = getattr(ctx, "session_id", None) if not isinstance(ctx, dict) else ctx.get("session_id")
    return str(value or "default")


def _last_human(messages: Sequence[BaseMessage]) -> HumanMessage:
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            return m
    raise ValueError("the state has no human message to answer; add one to state['messages']")


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.text)


def make_recall_node(memory: "Memory") -> Callable[[MemoryState, Runtime[Any]], dict[str, Any]]:
    """``recall``: the memory layer's retrieval for the newest human message."""

    def recall(state: MemoryState, runtime: Runtime[Any]) -> dict[str, Any]:
        query = _text(_last_human(state["messages"]))
        return {"recollection": memory.recall(user_of(runtime), query)}

    return recall


def make_respond_node(chat_model: BaseChatModel, *, count_tokens: Callable[[str], int],
                      budget: PromptBudget | None = None, now: Callable[[], Any] | None = None,
                      layout: PromptLayout | None = None) -> Callable[[MemoryState, Runtime[Any]], dict[str, Any]]:
    """``respond``: a profile- and retrieval-augmented prompt within the budget; the reply streams."""

    from agent.chat_model import PllmChatModel

    # pllm's local model serves each user with their published adapter; another chat model gets no extra kwargs.
    pass_user = isinstance(chat_model, PllmChatModel)

    def respond(state: MemoryState, runtime: Runtime[Any]) -> dict[str, Any]:
        messages = state["messages"]
        per_user: dict[str, Any] = {"user_id": user_of(runtime)} if pass_user else {}
        generation = getattr(runtime.context, "generation", None)
        if pass_user and generation is not None:
            per_user["settings"] = generation
        built: BuiltPrompt = build_prompt(
            user_id=user_of(runtime), message=_text(_last_human(messages)),
            recollection=state.get("recollection"), history=messages[:-1],
            count_tokens=count_tokens, budget=budget, now=now() if now else None, layout=layout,
        )
        reply = chat_model.invoke(built.messages, **per_user)
        return {"messages": [AIMessage(content=reply.content)], "prompt": built.messages}

    return respond


def make_remember_node(memory: "Memory", *, remember_replies: bool = True,
                       ) -> Callable[[MemoryState, Runtime[Any]], dict[str, Any]]:
    """``remember``: the turn into memory (the user's message; the reply as an assistant episode)."""

    def remember(state: MemoryState, runtime: Runtime[Any]) -> dict[str, Any]:
        user, session = user_of(runtime), session_of(runtime)
        messages = state["messages"]
        human = _last_human(messages)
        events = list(memory.remember(user, _text(human), role="user", session_id=session).events)
        last, reply_id = messages[-1], None
        if remember_replies and isinstance(last, AIMessage) and _text(last).strip():
            reply_id = memory.remember(user, _text(last), role="assistant", session_id=session).episode.id
        return {"events": events, "reply_id": reply_id}

    return remember


def make_adapt_node(policy: "UpdatePolicy", worker: "UpdateWorker", *, now: Callable[[], Any],
                    ) -> Callable[[MemoryState, Runtime[Any]], dict[str, Any]]:
    """``adapt``: change events → model-update jobs, handed to the background worker, and the user's turn to the
    worker's turn watchers (never blocks)."""

    def adapt(state: MemoryState, runtime: Runtime[Any]) -> dict[str, Any]:
        user_id, at = user_of(runtime), now()
        jobs = policy.plan(user_id, state.get("events") or [], at)
        worker.submit(jobs)
        said = next((m for m in reversed(state.get("messages") or []) if isinstance(m, HumanMessage)), None)
        if said is not None and isinstance(said.content, str) and said.content.strip():
            worker.observe(user_id, said.content, at)  # turn watchers (style drift, N new turns) queue their work
        return {"jobs": [j.kind for j in jobs]}

    return adapt
