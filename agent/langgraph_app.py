"""pllm's personal graph for LangGraph's own server (``langgraph dev`` / ``langgraph up``), named in ``langgraph.json``.

``langgraph.json`` points at :func:`make_graph`, an async factory: importing this module does nothing; the first call
builds the stack from :class:`~agent.settings.Settings` (``PLLM_*`` environment variables: home, model, device,
Chroma URL, ...) — memory, the local model, the update worker with its model-level handlers — and compiles the
personal graph (``recall → respond → remember → adapt``) over it *without* a checkpointer: the LangGraph server
supplies its own and keeps the threads. The server calls the factory for every run and every schema or state
read, so the graph is built once per process and the same one returned after.

Each run needs the user in its context, e.g. with the SDK::

    client.runs.wait(thread_id, "pllm", input={"messages": [{"role": "user", "content": "Hi"}]},
                     context={"user_id": "ana", "session_id": "s1"})

Conversation threads live in the server here, not in pllm's checkpointer, so ``pllm memory export/forget``
reach the user's memory, facts and model but not those threads (delete them through the server's API).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from langgraph.graph.state import CompiledStateGraph

    from agent.settings import Settings
    from agent.stack import Stack

__all__ = ["GRAPH_NAME", "build_server_graph", "make_graph", "close"]

log = logging.getLogger(__name__)

GRAPH_NAME = "pllm"  # the graph's id in langgraph.json

_lock = threading.Lock()
_built: "tuple[CompiledStateGraph, Stack] | None" = None


def build_server_graph(settings: "Settings | None" = None, **stack_kwargs: Any) -> "tuple[CompiledStateGraph, Stack]":
    """Build the stack from ``settings`` (default: ``Settings()``, the environment) and compile the personal
    graph over it without a checkpointer; returns the graph and the stack (close the stack when done).

    ``stack_kwargs`` go to :func:`agent.stack.build_stack` (``local=``, ``embedder=``, ``clock=`` ...).
    The stack's own checkpointer is not used by the server's graph, so it is the SQLite one under the home
    even when ``PLLM_POSTGRES_URL`` is set (no connection to a database the server does not use).
    """
    from agent.graph import _approx_tokens, build_graph
    from agent.settings import Settings
    from agent.stack import build_stack

    settings = (settings or Settings()).model_copy(update={"postgres_url": None})
    stack = build_stack(settings, **stack_kwargs)
    try:
        agent = stack.agent
        count_tokens = stack.local.count_tokens if stack.local is not None else _approx_tokens
        builder = build_graph(stack.memory, agent.chat_model, count_tokens=count_tokens, policy=agent.policy,
                              worker=agent.worker)
        graph = builder.compile(name=GRAPH_NAME)
    except BaseException:
        stack.close()
        raise
    log.info("pllm graph for the LangGraph server: home %s, %s", settings.home, agent.describe())
    return graph, stack


async def make_graph() -> "CompiledStateGraph":
    """The graph ``langgraph.json`` names: built on the first call (from the environment), then reused.

    A coroutine, so the server awaits it: the first build (memory, the model: seconds) runs in a worker thread,
    off the server's event loop."""
    if _built is not None:
        return _built[0]
    return await asyncio.to_thread(_build_once)


def _build_once() -> "CompiledStateGraph":
    global _built
    with _lock:  # concurrent first calls build one stack
        if _built is None:
            _built = build_server_graph()
            atexit.register(close)
        return _built[0]


def close() -> None:
    """Stop the update worker and close the memory of the graph :func:`make_graph` built (if any)."""
    global _built
    with _lock:
        built, _built = _built, None
    if built is not None:
        built[1].close()
