"""SQLite plumbing shared by the memory layer: one way to connect, to write and to fail.

Several processes may use one home's SQLite files at once (a chat and ``pllm memory show``; several
workers against a Chroma server). So every connection opened here

* waits up to ``busy_timeout_s`` for another process's write transaction instead of failing at once with
  "database is locked" (Python's ``timeout=`` is SQLite's busy handler);
* is in autocommit mode (``isolation_level=None``): writers open their transactions explicitly with
  ``BEGIN IMMEDIATE``, which takes the write lock up front, so whatever a writer reads inside is fresh
  and cannot be changed by another process before it commits;
* turns every ``sqlite3.Error`` into :class:`StoreError`, with a message that says what to do.

:class:`UserVersions` is the per-user write counter in ``memory.sqlite``: every write transaction about
a user (a turn, an eviction, an import, a forget) stamps the user with the next value of one home-wide
counter. A process compares the stamp with the one its caches were built at (one primary-key read) to
notice writes made by another process. The counter is home-wide, never per user, so a user forgotten and
written again can never come back to a stamp a stale cache remembers.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from memory.errors import StoreError

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "SqliteDb", "UserVersions"]

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_S = 30.0
_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-variable limit


class SqliteDb:
    """One connection to one SQLite file, shared by the threads of one object (guarded by a lock).

    ``read_only``: the file must exist; the connection refuses every write (``PRAGMA query_only``), and
    nothing (not even the WAL mode) is changed on open.
    """

    def __init__(self, path: Path | str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
                 read_only: bool = False) -> None:
        self.path = str(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.read_only = read_only
        self.lock = threading.RLock()  # one transaction at a time on this connection
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            raise StoreError(f"there is no pllm memory at {self.path}; nothing to read (check the home, or open it "
                             "writable once)")
        with self.errors("open the database"):
            self.conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False,
                                        isolation_level=None)
            if read_only:
                self.conn.execute("PRAGMA query_only=ON")
            else:
                self.conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
                self.conn.execute("PRAGMA secure_delete=ON")  # forget() must not leave text in free pages

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn a ``sqlite3.Error`` inside the block into :class:`StoreError` saying what failed and what to do."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(self._explain(action, exc)) from exc

    def _explain(self, action: str, exc: sqlite3.Error) -> str:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return (f"could not {action}: {self.path} stayed locked by another process for more than "
                    f"{self.busy_timeout_s:g} s ({text}). Nothing was written; retry when that process is idle, "
                    "or raise MemoryConfig.busy_timeout_s.")
        if isinstance(exc, sqlite3.IntegrityError):
            return (f"could not {action}: a record with the same id is already stored in {self.path} ({text}); "
                    "nothing was written.")
        if "readonly" in text or "read-only" in text:
            return f"could not {action}: {self.path} is open read-only ({text}); open it writable to change it."
        return (f"could not {action}: SQLite failed on {self.path} ({type(exc).__name__}: {text}). Nothing was "
                "written; check that the disk is writable and not full.")

    @contextlib.contextmanager
    def transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``; ``ROLLBACK`` on any exception).

        Other exceptions pass through unchanged after the rollback; SQLite's become :class:`StoreError`.
        """
        with self.lock, self.errors(action):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise

    def rollback(self) -> None:
        """Roll back the open transaction, if any (a failed rollback is logged: the error that caused it wins)."""
        if not self.conn.in_transaction:
            return
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rolling back on %s failed", self.path)

    def rows(self, sql: str, args: Sequence[Any] = (), *, action: str = "read") -> list[tuple[Any, ...]]:
        """All rows of one read statement."""
        with self.lock, self.errors(action):
            return self.conn.execute(sql, list(args)).fetchall()

    def script(self, sql: str, *, action: str = "create the tables") -> None:
        """Run a schema script (``CREATE … IF NOT EXISTS``) in its own transaction."""
        with self.lock, self.errors(action):
            self.conn.executescript(sql)

    def taken(self, table: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` present in ``table``'s ``id`` primary key (ours: a table name, never user input)."""
        found: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = list(ids[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            found |= {r[0] for r in self.rows(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk,
                                              action=f"read {table} ids")}
        return found

    def has_tables(self, *names: str) -> bool:
        """Whether every named table exists (a read-only open checks that the writer created them)."""
        marks = ",".join("?" * len(names))
        found = self.rows(f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({marks})", names)
        return len(found) == len(set(names))

    def checkpoint(self) -> None:
        """Copy the WAL into the main file and empty it (after a forget: no copy of deleted rows stays there)."""
        if self.path != ":memory:" and not self.read_only:
            with self.lock, self.errors("checkpoint the write-ahead log"):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


_VERSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS write_clock (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS user_versions (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""


class UserVersions:
    """Per-user write stamps in ``memory.sqlite`` (see the module docstring). 0: nothing written yet."""

    TABLES = ("write_clock", "user_versions")

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        if not db.read_only:
            db.script(_VERSIONS_SCHEMA)

    def get(self, user_id: str) -> int:
        """The user's current stamp (committed writes only; one primary-key read)."""
        rows = self._db.rows("SELECT version FROM user_versions WHERE user_id = ?", (user_id,),
                             action="read the user's write version")
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def bump(conn: sqlite3.Connection, user_id: str) -> tuple[int, int]:
        """Stamp a write about ``user_id`` inside the caller's open transaction → ``(before, after)``."""
        before = conn.execute("SELECT version FROM user_versions WHERE user_id = ?", (user_id,)).fetchone()
        (after,) = conn.execute("INSERT INTO write_clock VALUES (0, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1 "
                                "RETURNING n").fetchone()
        conn.execute("INSERT INTO user_versions VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET version = ?",
                     (user_id, after, after))
        return (int(before[0]) if before else 0, int(after))

    @staticmethod
    def drop(conn: sqlite3.Connection, user_id: str) -> None:
        """Forget the user's stamp (inside the caller's transaction); the clock still moves on, so a later
        write gets a stamp no cache can have seen."""
        conn.execute("INSERT INTO write_clock VALUES (0, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1")
        conn.execute("DELETE FROM user_versions WHERE user_id = ?", (user_id,))
