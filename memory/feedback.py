"""The ``feedback`` table of ``memory.sqlite``: a user's ratings of the assistant's replies, with history.

A rating is ``+1`` (the user liked the reply) or ``-1`` (they did not), given on one stored assistant
episode at a time. Ratings are appended, never overwritten: re-rating a reply adds a row and the newest row
is the reply's current rating (:func:`current_ratings`), so the signal over time stays available to whatever
reads it (the style adapter's training data takes the replies rated up; a preference-drift detector can
read the sequence). A rated reply's episode row is kept when the episode cap evicts it from the search
index (as a fact's evidence is), so it stays training data; ``forget`` deletes the ratings with the user.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from memory.db import SqliteDb
from memory.records import _check_text, _check_time, new_id

__all__ = ["Feedback", "FeedbackLog", "current_ratings"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    value INTEGER NOT NULL,
    at TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_user ON feedback (user_id, recorded_at);
"""
_COLUMNS = "id, user_id, episode_id, value, at, recorded_at"
VALUES = (-1, 1)


@dataclass(frozen=True, slots=True)
class Feedback:
    """One rating of one assistant reply (``episode_id``): ``value`` +1 or -1, given at ``at``."""

    user_id: str
    episode_id: str
    value: int
    at: datetime  # when the user rated it (event time)
    recorded_at: datetime  # when pllm stored the rating
    id: str = field(default_factory=lambda: new_id("fb"))

    def __post_init__(self) -> None:
        _check_text("user_id", self.user_id)
        _check_text("episode_id", self.episode_id)
        if isinstance(self.value, bool) or self.value not in VALUES:
            raise ValueError(f"feedback value must be 1 (liked) or -1 (disliked), got {self.value!r}")
        object.__setattr__(self, "at", _check_time("at", self.at))
        object.__setattr__(self, "recorded_at", _check_time("recorded_at", self.recorded_at))


def current_ratings(ratings: Sequence[Feedback]) -> dict[str, Feedback]:
    """Each rated episode's newest rating (by ``at``, then ``recorded_at``)."""
    out: dict[str, Feedback] = {}
    for fb in sorted(ratings, key=lambda f: (f.at, f.recorded_at)):
        out[fb.episode_id] = fb
    return out


class FeedbackLog:
    """Insert, read and delete the rows of the ``feedback`` table (scoped to one user per call)."""

    TABLE = "feedback"

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        if not db.read_only:
            db.script(_SCHEMA, action="create the feedback table")

    @staticmethod
    def insert(conn: sqlite3.Connection, ratings: Sequence[Feedback]) -> None:
        """Insert ``ratings`` in the caller's open transaction."""
        conn.executemany(f"INSERT INTO feedback ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", [_row(f) for f in ratings])

    @staticmethod
    def delete_user(conn: sqlite3.Connection, user_id: str) -> int:
        """Delete every rating of the user; returns how many."""
        return conn.execute("DELETE FROM feedback WHERE user_id = ?", (user_id,)).rowcount

    def of_user(self, user_id: str) -> list[Feedback]:
        """The user's ratings, oldest first by the time they were given (none on a home from before ratings)."""
        if self._db.read_only and not self._db.has_tables(self.TABLE):
            return []
        rows = self._db.rows(f"SELECT {_COLUMNS} FROM feedback WHERE user_id = ? ORDER BY at, recorded_at",
                             (user_id,), action="read feedback")
        return [_feedback(r) for r in rows]

    def rated_episode_ids(self, user_id: str) -> set[str]:
        """Ids of the user's episodes that have at least one rating."""
        if self._db.read_only and not self._db.has_tables(self.TABLE):
            return set()
        rows = self._db.rows("SELECT DISTINCT episode_id FROM feedback WHERE user_id = ?", (user_id,),
                             action="read feedback")
        return {r[0] for r in rows}

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are taken in this home, by any user."""
        return self._db.taken(self.TABLE, ids)


def _row(f: Feedback) -> tuple[Any, ...]:
    return (f.id, f.user_id, f.episode_id, int(f.value), f.at.isoformat(), f.recorded_at.isoformat())


def _feedback(r: Sequence[Any]) -> Feedback:
    return Feedback(id=r[0], user_id=r[1], episode_id=r[2], value=int(r[3]), at=datetime.fromisoformat(r[4]),
                    recorded_at=datetime.fromisoformat(r[5]))
