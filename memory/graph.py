"""The bi-temporal per-user knowledge graph over a durable, append-only SQLite event log.

Truth lives in the table ``fact_events``; each row carries the *full state* of one fact after the
operation (``payload``), so replaying a user's rows in ``seq`` order rebuilds their facts exactly:

* ``assert``    a new fact, or an existing one reinforced (new evidence episode, higher confidence);
* ``supersede`` a fact closed (``valid_to`` set) because a new value took its slot; the new fact follows
                as its own ``assert`` row, and ``payload.superseded_by`` names it;
* ``retract``   a fact closed by an explicit negation ("I no longer ...") or by :meth:`retract`.

``forget`` and ``import`` are reserved op names (accepted by the table's CHECK for audit markers a
deployment may add); this class writes neither: :meth:`KnowledgeGraph.forget` must leave no trace of the
user, and :meth:`KnowledgeGraph.import_events` replays the exported ops verbatim so a round trip is exact.

Invariants:

* rows are never updated; rows are deleted only by :meth:`KnowledgeGraph.forget` (the user's right);
* at most one current fact per slot (see :mod:`memory.relations`);
* a write touches only the slots its candidates name (plus, for "switched from X to Y", the functional
  slots that held X) — every other fact keeps its id and contents;
* one user's facts never appear in another user's queries (every query is keyed by ``user_id``).

Time: ``at`` is when the change happened in the user's world (an edge's ``valid_from``/``valid_to``);
``recorded_at`` is when pllm learnt it, from the injected clock. ``facts(as_of=t)`` replays only rows
recorded by ``t`` and keeps the facts valid at ``t`` — what we believed at ``t`` about ``t``.

Per user, the facts are materialized into a ``networkx.MultiDiGraph`` (nodes: entity names, merged
case-insensitively under their first spelling; edge key: fact id; edge attribute ``fact``) on first
access and kept in sync on every write; at most ``max_users`` graphs stay materialized (LRU).

Several processes (or several objects) may append to one log. A materialized graph remembers the user's
last ``seq`` it reflects; every use first reads the user's current ``MAX(seq)`` (one indexed lookup) and
rebuilds from the log when it moved. A write plans its change inside its ``BEGIN IMMEDIATE`` transaction,
against the state as of that transaction, so two writers can never both "supersede" the same current
value: the second one sees the first one's new value and supersedes that.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import networkx as nx

from memory.clock import Clock, to_utc
from memory.db import DEFAULT_BUSY_TIMEOUT_S, SqliteDb
from memory.errors import InvalidInput, StoreError
from memory.extraction.base import Candidate
from memory.graph_state import Batch, UserGraph, as_graph, replay, resolve_subject, to_claim
from memory.records import ChangeEvent, Fact, FactRetracted, record_to_dict
from memory.relations import POLARITY_RELATIONS, canonical_category

__all__ = ["GraphEvent", "HistoryEntry", "KnowledgeGraph", "OPS", "create_schema"]

OPS = ("assert", "supersede", "retract", "forget", "import")
_REPLAYABLE = ("assert", "supersede", "retract")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS fact_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL,
    op          TEXT NOT NULL CHECK (op IN ({", ".join(repr(o) for o in OPS)})),
    fact_id     TEXT NOT NULL,
    payload     TEXT NOT NULL CHECK (json_valid(payload)),
    at          TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    episode_id  TEXT
);
CREATE INDEX IF NOT EXISTS fact_events_user ON fact_events (user_id, seq);
"""
_COLUMNS = "seq, user_id, op, fact_id, payload, at, recorded_at, episode_id"


@dataclass(frozen=True, slots=True)
class GraphEvent:
    """One row of the log: ``op`` applied to ``fact`` (its full state after the op)."""

    seq: int
    user_id: str
    op: str
    fact: Fact
    at: datetime  # when it happened in the user's world
    recorded_at: datetime  # when pllm wrote it
    episode_id: str | None = None
    superseded_by: str | None = None  # supersede rows: the id of the fact that took the slot

    @property
    def fact_id(self) -> str:
        return self.fact.id

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphEvent:
        """Inverse of ``record_to_dict(event)`` (an export read back from JSON)."""
        try:
            return cls(seq=int(data["seq"]), user_id=data["user_id"], op=data["op"], fact=_fact_from_dict(data["fact"]),
                       at=datetime.fromisoformat(data["at"]), recorded_at=datetime.fromisoformat(data["recorded_at"]),
                       episode_id=data.get("episode_id"), superseded_by=data.get("superseded_by"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"not a graph event export ({exc}); expected record_to_dict(GraphEvent) output") from exc


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One step in a slot's timeline: the fact's state after ``op``."""

    fact: Fact
    op: str
    at: datetime
    episode_id: str | None


def create_schema(conn: sqlite3.Connection) -> None:
    """Create ``fact_events`` if absent (idempotent); for callers that open the database first."""
    conn.executescript(_SCHEMA)


# ---------------------------------------------------------------------------------------------- encoding


def _ts(value: datetime) -> str:
    """Fixed-width UTC text, so SQLite's string comparison orders times correctly."""
    return to_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _fact_from_dict(d: dict[str, Any]) -> Fact:
    data = dict(d)
    for name in ("valid_from", "recorded_at", "valid_to"):
        if data.get(name) is not None:
            data[name] = datetime.fromisoformat(data[name])
    data["source_episode_ids"] = tuple(data.get("source_episode_ids") or ())
    return Fact(**data)


def _payload(fact: Fact, superseded_by: str | None) -> str:
    return json.dumps({"fact": record_to_dict(fact), "superseded_by": superseded_by}, sort_keys=True)


def _event_from_row(row: Sequence[Any]) -> GraphEvent:
    seq, user_id, op, _fact_id, payload, at, recorded_at, episode_id = row
    data = json.loads(payload)
    return GraphEvent(seq=seq, user_id=user_id, op=op, fact=_fact_from_dict(data["fact"]),
                      at=datetime.fromisoformat(at), recorded_at=datetime.fromisoformat(recorded_at),
                      episode_id=episode_id, superseded_by=data.get("superseded_by"))


# ---------------------------------------------------------------------------------------------- the graph


class KnowledgeGraph:
    """Per-user bi-temporal knowledge graphs over one SQLite event log (thread-safe: one RLock).

    ``busy_timeout_s``: how long a write waits for another process's transaction on the same file.
    ``read_only``: the log must exist; every write raises :class:`StoreError`.
    """

    def __init__(self, path: Path | str, clock: Clock, *, max_users: int = 256,
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, read_only: bool = False) -> None:
        if max_users < 1:
            raise InvalidInput(f"max_users must be >= 1, got {max_users}")
        self._path = str(path)
        self._clock = clock
        self._max_users = max_users
        self._lock = threading.RLock()
        self._users: OrderedDict[str, UserGraph] = OrderedDict()
        try:
            if self._path != ":memory:" and not read_only:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of the knowledge-graph log {self._path}: {exc}") from exc
        self._sql: SqliteDb | None = SqliteDb(self._path, busy_timeout_s=busy_timeout_s, read_only=read_only)
        if not read_only:
            self._sql.script(_SCHEMA, action="create the knowledge-graph log")

    # ------------------------------------------------------------------------------------------ plumbing

    @property
    def _store(self) -> SqliteDb:
        if self._sql is None:
            raise StoreError("this KnowledgeGraph is closed; construct a new one")
        return self._sql

    @property
    def _db(self) -> sqlite3.Connection:
        return self._store.conn

    @contextlib.contextmanager
    def _writing(self, conn: sqlite3.Connection | None, action: str) -> Iterator[sqlite3.Connection]:
        """The connection to write on: the caller's (inside its open transaction, which it commits or rolls
        back), else our own inside a ``BEGIN IMMEDIATE`` transaction of our own."""
        if conn is not None:
            with self._store.errors(action):
                self._check_conn(conn)
                yield conn
            return
        with self._store.transaction(action) as db:
            yield db

    @staticmethod
    def _head(db: sqlite3.Connection, user_id: str) -> int:
        """The user's last seq in the log (0: none) — one lookup in the (user_id, seq) index."""
        (head,) = db.execute("SELECT MAX(seq) FROM fact_events WHERE user_id = ?", (user_id,)).fetchone()
        return int(head or 0)

    def _rows(self, db: sqlite3.Connection, user_id: str, recorded_by: datetime | None = None) -> list[GraphEvent]:
        sql = f"SELECT {_COLUMNS} FROM fact_events WHERE user_id = ? AND op IN ('assert','supersede','retract')"
        args: list[Any] = [user_id]
        if recorded_by is not None:
            sql += " AND recorded_at <= ?"
            args.append(_ts(recorded_by))
        try:
            return [_event_from_row(r) for r in db.execute(sql + " ORDER BY seq", args)]
        except sqlite3.Error as exc:
            raise StoreError(f"reading the graph log of user {user_id!r} failed: {exc}") from exc

    def _state(self, user_id: str, db: sqlite3.Connection | None = None) -> UserGraph:
        """The user's materialized graph, rebuilt from the log if anyone appended since it was built."""
        db = db or self._db
        try:
            head = self._head(db, user_id)  # read before the rows: a state may be newer than its seq, never older
        except sqlite3.Error as exc:
            raise StoreError(f"reading the graph log of user {user_id!r} failed: {exc}") from exc
        state = self._users.get(user_id)
        if state is not None and state.seq == head:
            self._users.move_to_end(user_id)
            return state
        state = replay(user_id, (e.fact for e in self._rows(db, user_id)))
        state.seq = head
        self._users[user_id] = state
        while len(self._users) > self._max_users:
            self._users.popitem(last=False)
        return state

    def _check_conn(self, conn: sqlite3.Connection) -> None:
        """The caller's connection must be on this log's database, inside (or able to open) a transaction."""
        if conn is self._store.conn:
            raise InvalidInput("pass your own connection as conn (or none); the graph's connection is private")
        files = {name: file for _, name, file in conn.execute("PRAGMA database_list")}
        mine = os.path.realpath(self._path) if self._path != ":memory:" else None
        if mine is None or not files.get("main") or os.path.realpath(files["main"]) != mine:
            raise InvalidInput(f"conn is open on {files.get('main') or 'an in-memory database'!r}, not on this "
                               f"graph's log {self._path!r}; open it on the same file")
        if conn.isolation_level is None and not conn.in_transaction:
            raise InvalidInput("conn is in autocommit mode with no open transaction; execute BEGIN first so the "
                               "graph events commit or roll back with the rest of your write")

    # ------------------------------------------------------------------------------------------ writes

    def apply(self, user_id: str, candidates: Sequence[Candidate], *, episode_id: str | None, at: datetime,
              conn: sqlite3.Connection | None = None) -> list[ChangeEvent]:
        """Turn extraction candidates into change events and append them to the log.

        New edge → ``FactAdded``; new value of a slot → ``FactSuperseded`` (the old edge gets
        ``valid_to=at``); a negated candidate matching a current edge → ``FactRetracted``; the same
        current value again → no event (the episode is added to its evidence by an ``assert`` row).
        A ``prefers_<dimension>`` value that changes also yields ``PreferenceDrift``.

        With ``conn``, rows are written in the caller's open transaction (``BEGIN IMMEDIATE`` — the
        plan is made against the log as that transaction sees it) and not committed; if the caller rolls
        back, it should call :meth:`invalidate`. Without ``conn``, the graph commits a transaction of its
        own. All candidates are validated before any write: on bad input nothing is written.
        """
        _check_user(user_id)
        at = _check_at(at)
        claims = [to_claim(user_id, c) for c in candidates]
        with self._lock, self._writing(conn, f"append graph events of user {user_id!r}") as db:
            state = self._state(user_id, db)  # fresh: nobody else can append until this transaction ends
            batch = Batch(state, at=at, now=to_utc(self._clock.now()), episode_id=episode_id)
            try:
                for claim in claims:
                    batch.claim(claim)
                self._append(db, batch)
            except BaseException:
                self._users.pop(user_id, None)  # the log is the truth: rebuild from it next time
                raise
            return batch.events

    def _append(self, db: sqlite3.Connection, batch: Batch) -> None:
        """Write the batch's planned rows (one ``recorded_at`` for all: the batch's ``now``) and move the
        state's seq to the new head (inside the same transaction, so nobody else's rows are in between)."""
        at, now = _ts(batch.at), _ts(batch.now)
        self._insert(db, [(batch.state.user_id, r.op, r.fact.id, _payload(r.fact, r.superseded_by), at, now,
                           batch.episode_id) for r in batch.rows])
        batch.state.seq = self._head(db, batch.state.user_id)

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            db.executemany("INSERT INTO fact_events (user_id, op, fact_id, payload, at, recorded_at, episode_id) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def invalidate(self, user_id: str) -> None:
        """Drop the user's materialized graph; the next access rebuilds it from the log."""
        with self._lock:
            self._users.pop(user_id, None)

    def retract(self, user_id: str, fact_id: str, *, at: datetime, episode_id: str | None = None) -> FactRetracted:
        """Close one current fact by id (a user's "that's wrong"); it stays in history."""
        _check_user(user_id)
        at = _check_at(at)
        with self._lock, self._writing(None, f"retract fact {fact_id!r} of user {user_id!r}") as db:
            state = self._state(user_id, db)
            fact = state.facts.get(fact_id)
            if fact is None:
                raise InvalidInput(f"user {user_id!r} has no fact {fact_id!r}; list them with facts()")
            if not fact.current:
                raise InvalidInput(f"fact {fact_id!r} was already closed at {fact.valid_to}; nothing to retract")
            batch = Batch(state, at=at, now=to_utc(self._clock.now()), episode_id=episode_id)
            try:
                event = batch.retract(fact)
                self._append(db, batch)
            except BaseException:
                self._users.pop(user_id, None)
                raise
            return event

    def import_events(self, user_id: str, events: Sequence[GraphEvent], *,
                      conn: sqlite3.Connection | None = None) -> None:
        """Replay an export (of any user) as ``user_id``'s log, keeping ops, times and episode ids.

        The user must have no graph events yet (call :meth:`forget` first to replace them). Facts whose
        subject was the exporting user get ``user_id`` as subject; third parties keep their names.
        ``conn``: write in the caller's open transaction (as for :meth:`apply`).
        """
        _check_user(user_id)
        for e in events:
            if not isinstance(e, GraphEvent) or e.op not in _REPLAYABLE:
                raise InvalidInput(f"cannot import {e!r}: expected GraphEvents with op in {_REPLAYABLE}")
        rows = [(user_id, e.op, e.fact.id, _payload(_rehome(e, user_id), e.superseded_by), _ts(e.at),
                 _ts(e.recorded_at), e.episode_id) for e in events]
        with self._lock, self._writing(conn, f"import the graph log of user {user_id!r}") as db:
            (count,) = db.execute("SELECT COUNT(*) FROM fact_events WHERE user_id = ?", (user_id,)).fetchone()
            if count:
                raise InvalidInput(f"user {user_id!r} already has {count} graph events; forget() them first or "
                                   "import into a fresh user id")
            self._insert(db, rows)
            self._users.pop(user_id, None)

    def forget(self, user_id: str, *, conn: sqlite3.Connection | None = None) -> int:
        """Delete every row of the user (a privacy right); records nothing about them. Returns rows removed.

        ``conn``: delete in the caller's open transaction (the caller checkpoints the WAL after committing).
        """
        _check_user(user_id)
        with self._lock:
            with self._writing(conn, f"forget user {user_id!r}") as db:
                removed = db.execute("DELETE FROM fact_events WHERE user_id = ?", (user_id,)).rowcount
            if conn is None:
                self._store.checkpoint()  # no copy of the rows left in the WAL
            self._users.pop(user_id, None)
            return removed

    def close(self) -> None:
        """Close the connection; further calls raise :class:`StoreError`."""
        with self._lock:
            if self._sql is not None:
                self._sql.close()
                self._sql = None
            self._users.clear()

    def __enter__(self) -> KnowledgeGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ reads

    def facts(self, user_id: str, *, as_of: datetime | None = None, include_superseded: bool = False,
              subject: str | None = None, relation: str | None = None, kind: str | None = None) -> list[Fact]:
        """The user's facts, oldest first. Default: current ones (``valid_to is None``).

        ``as_of=t``: facts valid at ``t`` in the world *and* recorded by ``t``; with
        ``include_superseded``, every fact recorded by ``t`` in its state at ``t``.
        """
        _check_user(user_id)
        with self._lock:
            if as_of is None:
                found = list(self._state(user_id).facts.values())
                if not include_superseded:
                    found = [f for f in found if f.current]
            else:
                t = _check_at(as_of)
                known = self._rows(self._db, user_id, recorded_by=t)
                found = list(replay(user_id, (e.fact for e in known)).facts.values())
                if not include_superseded:
                    found = [f for f in found if f.valid_at(t)]
        if subject is not None:
            want = resolve_subject(user_id, subject).casefold()
            found = [f for f in found if f.subject.casefold() == want]
        if relation is not None:
            found = [f for f in found if f.relation == relation]
        if kind is not None:
            found = [f for f in found if f.kind == kind]
        return found

    def get(self, user_id: str, fact_id: str) -> Fact | None:
        """The latest state of one fact (current or closed), or None."""
        _check_user(user_id)
        with self._lock:
            return self._state(user_id).facts.get(fact_id)

    def history(self, user_id: str, subject: str, relation: str, *, category: str | None = None,
                obj: str | None = None) -> list[HistoryEntry]:
        """The timeline of one slot, oldest first: every op on its facts, reinforcements included.

        ``likes`` and ``dislikes`` are one slot, so either name returns both; ``obj`` narrows the
        timeline to one object (e.g. the coffee preference).
        """
        _check_user(user_id)
        want_subject = resolve_subject(user_id, subject).casefold()
        relations = POLARITY_RELATIONS if relation in POLARITY_RELATIONS else {relation}
        want_category = canonical_category(category)
        with self._lock:
            events = self._rows(self._db, user_id)
        return [HistoryEntry(e.fact, e.op, e.at, e.episode_id) for e in events
                if e.fact.subject.casefold() == want_subject and e.fact.relation in relations
                and (want_category is None or e.fact.category == want_category)
                and (obj is None or e.fact.object.casefold() == obj.casefold())]

    def neighbourhood(self, user_id: str, entities: Iterable[str], *, hops: int = 1) -> list[Fact]:
        """Current facts within ``hops`` edges of the named entities (names matched case-insensitively).

        ``hops=1``: facts touching the entities; ``hops=2`` adds facts touching their neighbours.
        "user"/"self" name the user. Order: by discovery (breadth-first), each fact once.
        """
        _check_user(user_id)
        if hops < 1:
            raise InvalidInput(f"hops must be >= 1, got {hops}")
        with self._lock:
            state = self._state(user_id)
            keys = {resolve_subject(user_id, e).casefold() for e in entities}
            frontier = {state.nodes[k] for k in keys if k in state.nodes}
            visited, found = set(frontier), dict[str, Fact]()
            for _ in range(hops):
                reached: set[str] = set()
                for node in sorted(frontier):
                    for other, fact in state.current_edges(node):
                        found.setdefault(fact.id, fact)
                        reached.add(other)
                frontier = reached - visited
                visited |= reached
            return list(found.values())

    def graph(self, user_id: str, *, as_of: datetime | None = None) -> nx.MultiDiGraph:
        """A copy of the user's graph of current facts (or of facts valid ``as_of``, as known then)."""
        return as_graph(self.facts(user_id, as_of=as_of))

    def events(self, user_id: str) -> list[GraphEvent]:
        """The user's raw log in write order (for export; feed it to :meth:`import_events`)."""
        _check_user(user_id)
        with self._lock:
            return self._rows(self._db, user_id)

    def log_after(self, seq: int, *, limit: int = 500) -> list[tuple[int, str, str]]:
        """Rows of the log after ``seq`` that changed some user's facts, oldest first: ``(seq, user, "op relation: object")``.

        The model-update worker's outbox reads this (see :mod:`agent.jobs`); ``forget`` rows are left out
        (forgetting a user removes their model-level state directly).
        """
        rows = self._store.rows("SELECT seq, user_id, op, payload FROM fact_events WHERE seq > ? AND op != 'forget' "
                                "ORDER BY seq LIMIT ?", (int(seq), int(limit)), action="read the fact log")
        out: list[tuple[int, str, str]] = []
        for row_seq, user, op, payload in rows:
            fact = json.loads(payload).get("fact", {})
            out.append((int(row_seq), str(user), f"{op} {fact.get('relation', '?')}: {fact.get('object', '?')}"))
        return out

    def users(self) -> list[str]:
        """Every user with at least one graph event, sorted."""
        with self._lock:
            return [u for (u,) in self._store.rows("SELECT DISTINCT user_id FROM fact_events ORDER BY user_id")]


# ---------------------------------------------------------------------------------------------- validation


def _check_user(user_id: object) -> None:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInput(f"user_id must be a non-empty string, got {user_id!r}")


def _check_at(at: object) -> datetime:
    if not isinstance(at, datetime):
        raise InvalidInput(f"at/as_of must be a datetime (aware, or naive UTC), got {type(at).__name__}")
    return to_utc(at)


def _rehome(event: GraphEvent, user_id: str) -> Fact:
    """The event's fact as it belongs to ``user_id`` (the exporting user's self-facts follow the user)."""
    subject = user_id if event.fact.subject == event.user_id else event.fact.subject
    return replace(event.fact, user_id=user_id, subject=subject)
