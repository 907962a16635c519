"""A small write-ahead journal that keeps Chroma and SQLite in agreement across crashes.

A turn writes to two systems: SQLite (episodes + the graph event log — the truth) and Chroma (the
search index). Before touching Chroma, the turn's intent (the ids it will write and the facts it will
mark superseded) is committed to this journal, kept in its own SQLite file so it never waits on the
main database's write lock. After the main transaction commits, the entry is removed. An entry that
is still present at start-up belongs to a turn that was interrupted: if its episode row committed,
the Chroma writes are redone; if not, they are undone. Each entry names its writer (``owner``, see
:class:`memory.home_lock.TurnOwner`): recovery leaves alone the entries of writers that still run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from memory.db import DEFAULT_BUSY_TIMEOUT_S, SqliteDb

__all__ = ["Intent", "Journal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    turn_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    episode_ids TEXT NOT NULL,
    item_ids TEXT NOT NULL,
    superseded_fact_ids TEXT NOT NULL,
    owner TEXT                    -- the TurnOwner id of the writer; NULL in journals from before owners
);
"""


@dataclass(frozen=True)
class Intent:
    """What one turn is about to write to Chroma."""

    turn_id: str
    user_id: str
    episode_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    superseded_fact_ids: tuple[str, ...]
    owner: str | None = None


class Journal:
    """Durable list of in-flight turns (autocommit SQLite; one row per turn)."""

    def __init__(self, path: Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self._db = SqliteDb(path, busy_timeout_s=busy_timeout_s)
        with self._db.errors("open the write journal"):
            self._db.conn.execute("PRAGMA synchronous=FULL")  # an intent must survive a power cut
        self._db.script(_SCHEMA, action="create the write journal")
        columns = [r[1] for r in self._db.rows("PRAGMA table_info(pending)", action="read the write journal")]
        if "owner" not in columns:  # a journal from before owners
            self._db.script("ALTER TABLE pending ADD COLUMN owner TEXT", action="upgrade the write journal")

    def _write(self, action: str, sql: str, args: tuple[object, ...]) -> None:
        with self._db.lock, self._db.errors(action):
            self._db.conn.execute(sql, args)

    def begin(self, intent: Intent) -> None:
        self._write("record a turn in the write journal",
                    "INSERT OR REPLACE INTO pending (turn_id, user_id, episode_ids, item_ids, superseded_fact_ids, "
                    "owner) VALUES (?, ?, ?, ?, ?, ?)",
                    (intent.turn_id, intent.user_id, json.dumps(intent.episode_ids), json.dumps(intent.item_ids),
                     json.dumps(intent.superseded_fact_ids), intent.owner))

    def done(self, turn_id: str) -> None:
        self._write("clear a turn from the write journal", "DELETE FROM pending WHERE turn_id = ?", (turn_id,))

    def pending(self) -> list[Intent]:
        rows = self._db.rows("SELECT turn_id, user_id, episode_ids, item_ids, superseded_fact_ids, owner FROM pending",
                             action="read the write journal")
        return [Intent(r[0], r[1], tuple(json.loads(r[2])), tuple(json.loads(r[3])), tuple(json.loads(r[4])), r[5])
                for r in rows]

    def forget(self, user_id: str) -> None:
        self._write("forget a user's journal entries", "DELETE FROM pending WHERE user_id = ?", (user_id,))
        self._db.checkpoint()  # no copy of the rows left in the WAL

    def close(self) -> None:
        self._db.close()
