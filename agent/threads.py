"""Conversation threads: an opaque thread id per (user, session) and a registry of who owns which thread.

A LangGraph checkpointer knows threads only by id. pllm used to name them ``"{user}:{session}"`` and read
the owner back out of the name — but both parts may contain ``:``, so ``("bob:x", "s")`` and
``("bob", "x:s")`` shared a thread, and forgetting ``bob`` erased ``bob:x``'s threads. Now:

* :func:`thread_id_for` hashes an unambiguous encoding of the pair (a JSON list), so distinct pairs get
  distinct ids and an id does not spell out who it belongs to;
* :class:`ThreadRegistry` records each thread's owner and session when the thread is first used; listing,
  exporting and forgetting a user's threads go through it, never through the id's text.

The registry is one small SQLite table (``threads.sqlite`` under the home; in memory when there is no
home), independent of the checkpointer, so it works with any LangGraph checkpointer. When the threads live in
Postgres (``PLLM_POSTGRES_URL``), so does the registry (:class:`PostgresThreadRegistry`, table ``pllm_threads``
in the same database): every pllm process on that database sees, exports and forgets the same threads, which a
registry on one machine's disk could not. :func:`open_registry` picks the one a home's settings call for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["ThreadRegistry", "PostgresThreadRegistry", "ThreadRecord", "thread_id_for", "open_registry"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (user_id, session_id)
);
CREATE INDEX IF NOT EXISTS threads_by_user ON threads (user_id);
"""


def thread_id_for(user_id: str, session_id: str) -> str:
    """The checkpointer thread id of ``(user_id, session_id)``: 128 bits of SHA-256 over ``[user, session]``
    as JSON (an encoding in which no two pairs coincide)."""
    digest = hashlib.sha256(json.dumps([user_id, session_id]).encode("utf-8")).hexdigest()
    return f"pllm-{digest[:32]}"


class ThreadRecord(NamedTuple):
    thread_id: str
    user_id: str
    session_id: str
    created_at: str


class ThreadRegistry:
    """Owner and session of every conversation thread pllm opened (SQLite; ``path=None``: in memory)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")  # the CLI may forget while a chat runs
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @classmethod
    def under(cls, home: Path) -> "ThreadRegistry":
        """The registry of a pllm home (``HOME/threads.sqlite``)."""
        return cls(Path(home) / "threads.sqlite")

    def open_thread(self, user_id: str, session_id: str) -> str:
        """The thread id of ``(user_id, session_id)``, recorded with its owner if it is new."""
        thread_id = thread_id_for(user_id, session_id)
        now = datetime.now(timezone.utc).isoformat()
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO threads VALUES (?, ?, ?, ?)", (thread_id, user_id, session_id, now))
        return thread_id

    def of_user(self, user_id: str) -> list[ThreadRecord]:
        """The user's threads, in the order they were opened."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM threads WHERE user_id = ? ORDER BY rowid",
                                    (user_id,)).fetchall()
        return [ThreadRecord(*r) for r in rows]

    def owner(self, thread_id: str) -> ThreadRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
        return ThreadRecord(*row) if row else None

    def remove(self, thread_ids: list[str]) -> int:
        """Drop these threads from the registry (after their checkpoints were deleted)."""
        with self._lock:
            cur = self._db.executemany("DELETE FROM threads WHERE thread_id = ?", [(t,) for t in thread_ids])
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS pllm_threads (
    seq        BIGSERIAL,
    thread_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (user_id, session_id)
);
CREATE INDEX IF NOT EXISTS pllm_threads_by_user ON pllm_threads (user_id, seq);
"""
_PG_COLUMNS = "thread_id, user_id, session_id, created_at"
# The advisory-lock key under which pllm creates or migrates its tables in a Postgres database (the
# checkpointer's and the registry's): CREATE TABLE IF NOT EXISTS run by two sessions at once can fail.
PG_SCHEMA_LOCK = 0x706C6C6D  # "pllm"


@contextmanager
def pg_schema_lock(conn: Any, *, timeout: float = 120.0) -> Iterator[None]:
    """Hold pllm's schema lock (a session advisory lock) on ``conn``, an autocommit connection.

    It polls ``pg_try_advisory_lock`` instead of waiting inside ``pg_advisory_lock``: a statement waiting on
    the lock holds a snapshot, and the checkpointer's ``CREATE INDEX CONCURRENTLY`` (run by the replica holding
    the lock) waits for every older snapshot to end — a deadlock Postgres does not detect.
    """
    deadline = time.monotonic() + timeout
    while not _first(conn.execute("SELECT pg_try_advisory_lock(%s)", (PG_SCHEMA_LOCK,)).fetchone()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"another pllm process held the schema lock of this Postgres database for over "
                               f"{timeout:.0f} s (advisory lock {PG_SCHEMA_LOCK}); is one stuck creating tables?")
        time.sleep(0.05)
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (PG_SCHEMA_LOCK,))


def _first(row: Any) -> Any:
    """The first column of a row, as a tuple or as a dict (``dict_row``)."""
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


class PostgresThreadRegistry(ThreadRegistry):
    """The same registry in a Postgres table (``pllm_threads``), shared by every process on that database.

    Over a one-connection ``psycopg_pool`` pool (autocommit) that replaces a connection the server dropped.
    ``home``: a ``threads.sqlite`` left there by a pllm that kept the registry on disk is imported once and then
    renamed ``threads.sqlite.moved-to-postgres``, so no earlier thread loses its owner.
    """

    def __init__(self, url: str, *, home: Path | None = None, connect_timeout: float = 10.0) -> None:
        from psycopg_pool import ConnectionPool

        self.path = None
        self.url = url
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0}
        self._pool: Any = ConnectionPool(url, kwargs=kwargs, min_size=1, max_size=1, open=False,
                                         check=ConnectionPool.check_connection, name="pllm-threads", num_workers=1)
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
            with self._pool.connection() as conn, pg_schema_lock(conn):  # one replica at a time
                for statement in filter(str.strip, _PG_SCHEMA.split(";")):  # one command per execute
                    conn.execute(statement)
        except BaseException:
            self._pool.close()
            raise
        if home is not None:
            self._import_sqlite(Path(home) / "threads.sqlite")

    def _import_sqlite(self, path: Path) -> None:
        if not path.is_file():
            return
        old = ThreadRegistry(path)
        try:
            with old._lock:
                rows = old._db.execute(f"SELECT {_PG_COLUMNS} FROM threads ORDER BY rowid").fetchall()
        finally:
            old.close()
        with self._lock, self._pool.connection() as conn, conn.transaction():
            for row in rows:
                conn.execute(f"INSERT INTO pllm_threads ({_PG_COLUMNS}) VALUES (%s, %s, %s, %s) "
                             "ON CONFLICT DO NOTHING", row)
        moved = path.with_name(path.name + ".moved-to-postgres")
        path.replace(moved)
        for suffix in ("-wal", "-shm"):  # SQLite's side files, empty once the last connection closed
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        log.info("imported %d conversation thread(s) from %s into Postgres; the file is now %s", len(rows), path,
                 moved.name)

    def open_thread(self, user_id: str, session_id: str) -> str:
        thread_id = thread_id_for(user_id, session_id)
        now = datetime.now(timezone.utc).isoformat()
        with self._lock, self._pool.connection() as conn:
            conn.execute(f"INSERT INTO pllm_threads ({_PG_COLUMNS}) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                         (thread_id, user_id, session_id, now))
        return thread_id

    def of_user(self, user_id: str) -> list[ThreadRecord]:
        with self._lock, self._pool.connection() as conn:
            rows = conn.execute(f"SELECT {_PG_COLUMNS} FROM pllm_threads WHERE user_id = %s ORDER BY seq",
                                (user_id,)).fetchall()
        return [ThreadRecord(*r) for r in rows]

    def owner(self, thread_id: str) -> ThreadRecord | None:
        with self._lock, self._pool.connection() as conn:
            row = conn.execute(f"SELECT {_PG_COLUMNS} FROM pllm_threads WHERE thread_id = %s",
                               (thread_id,)).fetchone()
        return ThreadRecord(*row) if row else None

    def remove(self, thread_ids: list[str]) -> int:
        if not thread_ids:
            return 0
        with self._lock, self._pool.connection() as conn:
            cur = conn.execute("DELETE FROM pllm_threads WHERE thread_id = ANY(%s)", (list(thread_ids),))
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._pool.close()


def open_registry(home: Path, postgres_url: str | None = None) -> ThreadRegistry:
    """The thread registry of a pllm home: in Postgres when its threads are (``postgres_url``), else SQLite under
    ``home``. Open the checkpointer first: it reports a bad or unreachable URL with what to do."""
    if postgres_url:
        return PostgresThreadRegistry(postgres_url, home=home)
    return ThreadRegistry.under(home)
