"""The ``summaries`` table of ``memory.sqlite``: the record of truth of session summaries, and its one owner.

Consolidation writes a summary to Chroma's semantic store (the search index) and here, in one
transaction with the user's write stamp; export reads it from here, so an export made by a read-only
``Memory`` (which does not open an embedded Chroma) is complete. Writes run in a caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memory.db import SqliteDb

if TYPE_CHECKING:  # pragma: no cover
    from memory.stores import MemoryItem

__all__ = ["SummaryLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS summaries (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    at TEXT NOT NULL,                 -- end of the summarized span
    source_episode_ids TEXT NOT NULL  -- JSON list
);
CREATE INDEX IF NOT EXISTS summaries_by_user ON summaries (user_id, at);
"""


class SummaryLog:
    """Insert, read and delete the rows of the ``summaries`` table (one user per call)."""

    TABLE = "summaries"

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        self.created = not db.has_tables(self.TABLE)  # a home from before the table: see Memory._adopt_summaries
        if not db.read_only:
            db.script(_SCHEMA, action="create the summaries table")

    @staticmethod
    def put(conn: sqlite3.Connection, items: Sequence["MemoryItem"]) -> None:
        """Insert or replace summaries in the caller's open transaction."""
        conn.executemany("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?)",
                         [(i.id, i.user_id, i.text, i.at.isoformat(), json.dumps(list(i.source_episode_ids)))
                          for i in items])

    @staticmethod
    def delete_user(conn: sqlite3.Connection, user_id: str) -> int:
        return conn.execute("DELETE FROM summaries WHERE user_id = ?", (user_id,)).rowcount

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` taken in this home, by any user (the table's primary key)."""
        return self._db.taken(self.TABLE, ids)

    def of_user(self, user_id: str, ids: Sequence[str] | None = None) -> list["MemoryItem"]:
        """The user's summaries (all, or those of ``ids``), oldest first."""
        rows = self._db.rows("SELECT id, user_id, text, at, source_episode_ids FROM summaries WHERE user_id = ? "
                             "ORDER BY at, id", (user_id,), action="read summaries")
        wanted = None if ids is None else set(ids)
        return [_item(r) for r in rows if wanted is None or r[0] in wanted]


def _item(r: Sequence[Any]) -> "MemoryItem":
    from memory.stores import MemoryItem

    return MemoryItem(id=r[0], user_id=r[1], kind="summary", text=r[2], at=datetime.fromisoformat(r[3]),
                      source_episode_ids=tuple(json.loads(r[4])))
