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

from agent.capabilities import Capabilities, capabilities_of
from agent.errors import CheckpointerUnavailable, InvalidTurn
from agent.lifecycle import UserData, user_data_for
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
from agent.threads import ThreadRegistry, open_registry, pg_schema_lock, thread_id_for
from memory.errors import InvalidInput
from memory.validation import check_user_id, clean_text

if TYPE_CHECKING:  # pragma: no cover
    from datetime import datetime

    from editing import GenerationSettings
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.store.base import BaseStore

    from memory import ChangeEvent, Memory
    from memory.retrieval import Recollection
    from memory.service import Rated

__all__ = ["build_graph", "PersonalAgent", "TurnResult", "make_checkpointer", "checkpoint_serde", "close_checkpointer"]

log = logging.getLogger(__name__)

# Our records travel in the checkpointed state; tell LangGraph's serializer they are expected.
_STATE_TYPES = [
    ("memory.records", name) for name in
    ("Episode", "Fact", "FactAdded", "FactSuperseded", "FactRetracted", "PreferenceDrift", "StyleDrift")
] + [("memory.retrieval", name) for name in ("Recollection", "ScoredEpisode", "ScoredFact", "ScoredSummary")] + [
    ("memory.query_intent", "QueryIntent"), ("memory.time_anchor", "TimeWindow")]


def checkpoint_serde() -> Any:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=_STATE_TYPES)


def make_checkpointer(home: Path, postgres_url: str | None = None) -> "BaseCheckpointSaver":
    """SQLite under ``home`` by default; Postgres when a URL is configured (``PLLM_POSTGRES_URL``).

    Both use :func:`checkpoint_serde`. The Postgres saver runs over a small ``psycopg_pool`` pool (connections
    in autocommit with ``dict_row`` rows, as ``PostgresSaver.from_conn_string`` makes them) that replaces a
    connection the server dropped; the saver's own lock serializes its use, so one agent may serve several
    threads (a web server's threadpool). Its tables are created or migrated here. An unreachable or wrong
    URL raises :class:`~agent.errors.CheckpointerUnavailable` saying what to do. Close it with
    :func:`close_checkpointer`.
    """
    if postgres_url:
        return _postgres_checkpointer(postgres_url)
    from langgraph.checkpoint.sqlite import SqliteSaver

    home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(home / "checkpoints.sqlite"), check_same_thread=False)
    return SqliteSaver(conn, serde=checkpoint_serde())


_PG_CONNECT_TIMEOUT = 10  # seconds, unless the URL sets connect_timeout
_PG_WHAT_TO_DO = ("Check that the Postgres server is running and reachable from here and that the URL's user, "
                  "password, host, port and database are right (the database must exist), or unset "
                  "PLLM_POSTGRES_URL to keep conversation threads in SQLite under the pllm home")


def _redacted(url: str) -> str:
    """The URL as connection parameters, with any password masked (for messages and logs)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a malformed URL: say so without echoing it (it may hold a password)
        return "<a URL that is not a valid Postgres connection string>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)


def _sentence(exc: BaseException) -> str:
    """The driver's message on one line, ending as a sentence."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if text[-1] in ".?!" else text + "."


def _postgres_checkpointer(url: str) -> "BaseCheckpointSaver":
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.conninfo import conninfo_to_dict
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool, PoolTimeout
    except ImportError as exc:
        raise CheckpointerUnavailable(
            "a Postgres checkpointer was configured (PLLM_POSTGRES_URL) but its packages are missing "
            f"({exc.name}): pip install langgraph-checkpoint-postgres 'psycopg[binary]' psycopg-pool, "
            "or unset PLLM_POSTGRES_URL to use SQLite") from exc

    where = _redacted(url)
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise CheckpointerUnavailable(f"PLLM_POSTGRES_URL is not a valid Postgres connection string ({exc}); "
                                      "write it as postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE, or unset "
                                      "PLLM_POSTGRES_URL to use SQLite") from exc
    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    if "connect_timeout" not in given:
        kwargs["connect_timeout"] = _PG_CONNECT_TIMEOUT
    # One direct connection first: it fails with the server's own reason (refused, unknown database, bad
    # password), where the pool would only time out. It then holds pllm's schema lock while the saver creates
    # or migrates its tables: replicas started together on an empty database would otherwise run the same
    # CREATE TABLE IF NOT EXISTS at once, and one of them fails on a duplicate type. The lock goes with the
    # connection.
    try:
        probe = psycopg.connect(url, **kwargs)
    except psycopg.Error as exc:
        raise CheckpointerUnavailable(f"cannot connect to the Postgres checkpointer of PLLM_POSTGRES_URL "
                                      f"({where}): {_sentence(exc)} {_PG_WHAT_TO_DO}.") from exc
    with probe:
        # The saver holds its lock for every statement, so it never uses more than one connection at a time.
        pool: ConnectionPool[Any] = ConnectionPool(url, kwargs=kwargs, min_size=1, max_size=1, open=False,
                                                   check=ConnectionPool.check_connection, name="pllm-checkpoints",
                                                   num_workers=1)
        try:
            with pg_schema_lock(probe):
                pool.open(wait=True, timeout=float(kwargs.get("connect_timeout") or given.get("connect_timeout") or 30))
                saver = PostgresSaver(pool, serde=checkpoint_serde())
                saver.setup()  # creates the tables, or migrates them to this version of the package
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            pool.close()
            raise CheckpointerUnavailable(f"the Postgres checkpointer of PLLM_POSTGRES_URL ({where}) could not be "
                                          f"set up: {_sentence(exc)} The URL's user must be able to create tables "
                                          f"in its database. {_PG_WHAT_TO_DO}.") from exc
        except BaseException:
            pool.close()
            raise
    log.info("conversation threads in Postgres (%s)", where)
    return saver


def close_checkpointer(saver: "BaseCheckpointSaver") -> None:
    """Close the checkpointer's database connection or connection pool, if it has one (SQLite, Postgres).
    A second call does nothing."""
    conn = getattr(saver, "conn", None)
    if conn is not None and hasattr(conn, "close"):
        conn.close()


def open_threads(home: Path, postgres_url: str | None = None) -> tuple["BaseCheckpointSaver", ThreadRegistry]:
    """A home's conversation threads: the checkpointer (:func:`make_checkpointer`, first: it explains a bad or
    unreachable URL) and the registry of their owners (:func:`agent.threads.open_registry`, in the same place)."""
    checkpointer = make_checkpointer(home, postgres_url)
    try:
        return checkpointer, open_registry(home, postgres_url)
    except BaseException:
        close_checkpointer(checkpointer)
        raise


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
    reply_id: str | None = None  # the stored reply's episode id: rate it with PersonalAgent.rate


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class PersonalAgent:
    """A compiled personal graph with a checkpointer: one thread per (user, session).

    Threads have opaque ids (:func:`agent.threads.thread_id_for`) and their owners are kept in a
    :class:`~agent.threads.ThreadRegistry` (pass one under the home for a persistent checkpointer; the
    default is in memory, right for the default in-memory checkpointer). Every turn is validated before
    anything is written: a refused turn raises :class:`~agent.errors.InvalidTurn` and leaves no trace.
    ``user_data`` is the registry of everything held about a user (memory, threads, the store's
    namespaces): ``export``, ``import_`` and ``forget`` go through it.
    """

    def __init__(self, memory: "Memory", chat_model: BaseChatModel, *, checkpointer: "BaseCheckpointSaver | None" = None,
                 threads: ThreadRegistry | None = None, store: "BaseStore | None" = None,
                 policy: UpdatePolicy | None = None, worker: UpdateWorker | None = None,
                 budget: PromptBudget | None = None, count_tokens: Callable[[str], int] | None = None) -> None:
        from agent.chat_model import PllmChatModel

        self.memory = memory
        self.chat_model = chat_model
        self._local = isinstance(chat_model, PllmChatModel)
        self.capability_note: str | None = None  # why the model level is off, when a setting turned it off
        if count_tokens is None:
            count_tokens = chat_model.local.count_tokens if self._local else _approx_tokens
        if not self._local:
            log.info("chat model %s is not pllm's local model: only input-level personalization "
                     "(profile + retrieval in the prompt) applies", type(chat_model).__name__)
        self.worker = worker or UpdateWorker(clock=memory.clock)
        self.policy = policy or DefaultPolicy()
        builder = build_graph(memory, chat_model, count_tokens=count_tokens, policy=self.policy, worker=self.worker,
                              budget=budget)
        if checkpointer is None:
            from langgraph.checkpoint.memory import InMemorySaver

            checkpointer = InMemorySaver(serde=checkpoint_serde())
        elif threads is None:
            log.warning("a checkpointer was given without a thread registry: thread owners are kept in memory "
                        "only, so after a restart forget/export cannot find earlier threads; pass "
                        "threads=ThreadRegistry.under(home)")
        self.thread_registry = threads or ThreadRegistry()
        self.graph = builder.compile(checkpointer=checkpointer, store=store)
        self.user_data: UserData = user_data_for(memory, self.thread_registry, checkpointer, store=store)

    # ------------------------------------------------------------------------------- reporting

    def capabilities(self) -> Capabilities:
        """Which personalization levels are active (model level: local model + registered handlers)."""
        return capabilities_of(local_model=self._local, chat_model=type(self.chat_model).__name__,
                               handler_kinds=self.worker.handlers, off_reason=self.capability_note)

    @property
    def model_level(self) -> bool:
        """Whether model-level personalization is active (see :meth:`capabilities`)."""
        return self.capabilities().model_level

    def describe(self) -> str:
        return self.capabilities().describe()

    # ----------------------------------------------------------------------------------- turns

    @staticmethod
    def thread_id(user_id: str, session_id: str) -> str:
        """The checkpointer thread of ``(user_id, session_id)`` (opaque; see :mod:`agent.threads`)."""
        return thread_id_for(user_id, session_id)

    def _run_args(self, user_id: str, text: str, session_id: str,
                  generation: "GenerationSettings | None" = None) -> tuple[dict[str, Any], dict[str, Any], Context]:
        """Validate the turn, then open its thread; nothing is written before validation passed."""
        try:
            user_id = check_user_id(user_id)
            session_id = check_user_id(session_id, name="session_id")
            text = clean_text(text)
        except InvalidInput as exc:
            raise InvalidTurn(f"turn refused, nothing was stored: {exc}") from exc
        config = {"configurable": {"thread_id": self.thread_registry.open_thread(user_id, session_id)}}
        return {"messages": [HumanMessage(text)]}, config, Context(user_id=user_id, session_id=session_id,
                                                                   generation=generation)

    def stream(self, user_id: str, text: str, *, session_id: str = "default",
               generation: "GenerationSettings | None" = None) -> Iterator[str]:
        """Yield the reply as it is generated; memory is updated when the iterator is exhausted.

        The turn is validated when ``stream`` is called (not at the first ``next``). ``generation``: settings for
        this turn's reply only (pllm's local model; another chat model ignores them)."""
        state, config, ctx = self._run_args(user_id, text, session_id, generation)
        return self._stream(state, config, ctx)

    def _stream(self, state: dict[str, Any], config: dict[str, Any], ctx: Context) -> Iterator[str]:
        for chunk, meta in self.graph.stream(state, config, context=ctx, stream_mode="messages"):
            # Only the model's token chunks; the node's returned messages (prompt, full reply) are skipped.
            if isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "respond" and chunk.content:
                yield str(chunk.content)

    def chat(self, user_id: str, text: str, *, session_id: str = "default",
             generation: "GenerationSettings | None" = None) -> TurnResult:
        """Run one turn to completion and return the reply with what went into it (``generation``: as in
        :meth:`stream`)."""
        state, config, ctx = self._run_args(user_id, text, session_id, generation)
        out = self.graph.invoke(state, config, context=ctx)
        return TurnResult(reply=str(out["messages"][-1].content), prompt=out.get("prompt", []),
                          recollection=out.get("recollection"), events=out.get("events", []), jobs=out.get("jobs", []),
                          reply_id=out.get("reply_id"))

    def rate(self, user_id: str, value: int, *, reply_id: str | None = None, session_id: str = "default",
             at: "datetime | None" = None) -> "Rated":
        """Rate a reply: ``1`` (liked) or ``-1`` (disliked); by default the last reply of the session's thread.

        The rating is stored with its history in the user's memory (:meth:`memory.Memory.rate`); the replies
        rated up become training targets of the user's style adapter, and the rating moves the user's style weights
        (the result's ``events`` hold a ``PreferenceDrift`` when a weight turned to the other pole or the drift detector
        fired; the update policy turns it into a job — by default a merge of the user's preference layer). Raises
        :class:`InvalidTurn` when the session has no stored reply yet, the id is not one of the user's replies, or the
        value is not 1 / -1.
        """
        try:
            user_id = check_user_id(user_id)
            session_id = check_user_id(session_id, name="session_id")
            if reply_id is None:
                reply_id = self.last_turn(user_id, session_id).get("reply_id")
                if reply_id is None:
                    raise InvalidInput(f"session {session_id!r} of {user_id!r} has no stored reply to rate yet; "
                                       "chat first, or pass reply_id=")
            rated = self.memory.rate(user_id, reply_id, value, at=at)
        except InvalidInput as exc:
            raise InvalidTurn(f"rating refused, nothing was stored: {exc}") from exc
        if rated.events:
            self.worker.submit(self.policy.plan(user_id, list(rated.events), rated.feedback.at))
        return rated

    def last_turn(self, user_id: str, session_id: str = "default") -> dict[str, Any]:
        """The thread's checkpointed state (messages, last prompt, last recollection, events)."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": self.thread_id(user_id, session_id)}})
        return dict(snapshot.values)

    # ------------------------------------------------------------------------ the user's data

    def threads(self, user_id: str) -> list[str]:
        """The session ids of ``user_id``'s conversation threads (from the thread registry)."""
        return [rec.session_id for rec in self.thread_registry.of_user(user_id)]

    def export(self, user_id: str) -> dict[str, Any]:
        """Everything held about the user as one document (see :mod:`agent.lifecycle`)."""
        return self.user_data.export(user_id)

    def import_(self, document: dict[str, Any], *, user_id: str | None = None) -> dict[str, int]:
        """Load an :meth:`export` document (optionally under another user id); records loaded per part."""
        return self.user_data.import_(document, user_id=user_id)

    def forget(self, user_id: str) -> dict[str, int]:
        """Erase the user everywhere (memory, conversation threads, store namespaces); counts by kind
        (``user_data.forget`` gives them per part)."""
        by_kind: dict[str, int] = {}
        for counts in self.user_data.forget(user_id).values():
            for kind, n in counts.items():
                by_kind[kind] = by_kind.get(kind, 0) + n
        return by_kind

    def close(self) -> None:
        """Stop the update worker and close the checkpointer's connection and the thread registry."""
        self.worker.close()
        close_checkpointer(self.graph.checkpointer)  # type: ignore[arg-type]
        self.thread_registry.close()
