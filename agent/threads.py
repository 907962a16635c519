"""Conversation threads: an opaque thread id per (user, session) and a registry of who owns which thread.

A LangGraph checkpointer knows threads only by id. pllm used to name them ``"{user}:{session}"`` and read
the owner back out of the name — but both parts may contain ``:``, so ``("bob:x", "s")`` and
``("bob", "x:s")`` shared a thread, and forgetting ``bob`` erased ``bob:x``'s threads. Now:

* :func:`thread_id_for` hashes an unambiguous encoding of the pair (a JSON list), so distinct pairs get
  distinct ids and an id does not spell out who it belongs to;
* :class:`ThreadRegistry` records each thread's owner and session when the thread is first used; listing,
  exporting and forgetting a user's threads go through it, never through the id's text.

The registry is one small SQLite table (``threads.sqlite`` under the home; in memory when there is no
home), independent of the checkpointer, so it works with any LangGraph checkpointer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

__all__ = ["ThreadRegistry", "ThreadRecord", "thread_id_for"]

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
