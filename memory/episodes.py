"""The ``episodes`` table of ``memory.sqlite``: the record of truth of every stored turn, and its one owner.

Chroma's episodic store is the *search index* over these rows; a row outlives its index entry while a
fact cites it as evidence (``in_index = 0`` after eviction). Every write here runs inside a caller's
open transaction (``conn``), so a turn's row commits or rolls back together with its graph events and
its user's write stamp; reads use the owner's connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from memory.db import SqliteDb
from memory.records import Episode

__all__ = ["EpisodeLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    importance REAL NOT NULL,
    in_index INTEGER NOT NULL DEFAULT 1  -- 0 once evicted from the search index (kept as evidence of a fact)
);
CREATE INDEX IF NOT EXISTS episodes_by_user ON episodes (user_id, at);
"""
_COLUMNS = "id, user_id, session_id, role, text, at, recorded_at, importance"
_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-variable limit


class EpisodeLog:
    """Insert, read, evict and delete the rows of the ``episodes`` table (scoped to one user per call)."""

    TABLE = "episodes"

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        if not db.read_only:
            db.script(_SCHEMA, action="create the episodes table")

    # ---------------------------------------------------------------------------------- writes

    @staticmethod
    def insert(conn: sqlite3.Connection, episodes: Sequence[Episode], *, indexed: Iterable[bool] | None = None) -> None:
        """Insert ``episodes`` in the caller's open transaction; ``indexed``: per episode, whether it is
        in the search index (default: all are)."""
        flags = list(indexed) if indexed is not None else [True] * len(episodes)
        conn.executemany(f"INSERT INTO episodes ({_COLUMNS}, in_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [(*_row(e), int(flag)) for e, flag in zip(episodes, flags, strict=True)])

    @staticmethod
    def evict(conn: sqlite3.Connection, user_id: str, ids: Sequence[str], *, keep: set[str]) -> None:
        """Mark ``ids`` as out of the search index; delete the rows of those not in ``keep`` (evidence)."""
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"UPDATE episodes SET in_index = 0 WHERE user_id = ? AND id IN ({marks})", [user_id, *chunk])
        drop = [i for i in ids if i not in keep]
        for chunk in _chunks(drop):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM episodes WHERE user_id = ? AND id IN ({marks})", [user_id, *chunk])

    @staticmethod
    def delete_user(conn: sqlite3.Connection, user_id: str) -> int:
        """Delete every row of the user; returns how many."""
        return conn.execute("DELETE FROM episodes WHERE user_id = ?", (user_id,)).rowcount

    # ----------------------------------------------------------------------------------- reads

    def of_user(self, user_id: str, *, session_id: str | None = None) -> list[Episode]:
        """The user's episodes (of one session, if given), oldest first by event time."""
        sql, args = f"SELECT {_COLUMNS} FROM episodes WHERE user_id = ?", [user_id]
        if session_id is not None:
            sql, args = sql + " AND session_id = ?", args + [session_id]
        return [_episode(r) for r in self._db.rows(sql + " ORDER BY at", args, action="read episodes")]

    def get(self, user_id: str, ids: Sequence[str]) -> list[Episode]:
        """Those of ``ids`` that are the user's episodes (in no particular order)."""
        found: list[Episode] = []
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            rows = self._db.rows(f"SELECT {_COLUMNS} FROM episodes WHERE user_id = ? AND id IN ({marks})",
                                 [user_id, *chunk], action="read episodes")
            found += [_episode(r) for r in rows]
        return found

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are taken in this home, by any user (ids are the table's primary key)."""
        return self._db.taken(self.TABLE, ids)

    def exists(self, episode_id: str) -> bool:
        return bool(self._db.rows("SELECT 1 FROM episodes WHERE id = ?", (episode_id,), action="read episodes"))

    def indexed_count(self, user_id: str) -> int:
        """How many of the user's episodes are in the search index."""
        rows = self._db.rows("SELECT COUNT(*) FROM episodes WHERE user_id = ? AND in_index = 1", (user_id,),
                             action="count episodes")
        return int(rows[0][0])

    def indexed_ids(self, user_id: str) -> set[str]:
        """Ids of the user's episodes that are in the search index."""
        rows = self._db.rows("SELECT id FROM episodes WHERE user_id = ? AND in_index = 1", (user_id,),
                             action="read episode ids")
        return {r[0] for r in rows}

    def users(self) -> set[str]:
        """Every user with at least one row."""
        return {r[0] for r in self._db.rows("SELECT DISTINCT user_id FROM episodes", action="list users")}

    def has_user(self, user_id: str) -> bool:
        return bool(self._db.rows("SELECT 1 FROM episodes WHERE user_id = ? LIMIT 1", (user_id,), action="read episodes"))


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _row(e: Episode) -> tuple[Any, ...]:
    return (e.id, e.user_id, e.session_id, e.role, e.text, e.at.isoformat(), e.recorded_at.isoformat(), e.importance)


def _episode(r: Sequence[Any]) -> Episode:
    return Episode(id=r[0], user_id=r[1], session_id=r[2], role=r[3], text=r[4], at=datetime.fromisoformat(r[5]),
                   recorded_at=datetime.fromisoformat(r[6]), importance=float(r[7]))
