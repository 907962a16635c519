"""Durable model-update jobs: a SQLite table of jobs and the outbox cursor over the memory's fact log.

A job has an id, a kind, a user, a summary of the events that called for it, its attempts, a state
(``queued`` → ``running`` → ``done`` | ``failed`` | ``skipped``), its error and a one-line detail. Jobs are
claimed with a conditional update (``queued`` → ``running`` only if still queued), so several worker
threads or processes on one home never run the same job twice. A job found ``running`` when a worker
starts was interrupted by a crash: it goes back to the queue and is redone (handlers are idempotent).

The **outbox**: knowledge edits are fed from the memory's fact log (``fact_events``, ordered by ``seq``),
not from the in-memory change events of a turn. :meth:`JobStore.consume` records, in one transaction,
the jobs for new log rows *and* the last ``seq`` consumed — so a crash between ``remember`` and the job
loses nothing: the next worker resumes from the cursor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from memory.db import SqliteDb

__all__ = ["JobRecord", "JobStore", "JOB_STATES"]

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "done", "failed", "skipped")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    summary     TEXT NOT NULL CHECK (json_valid(summary)),
    state       TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in JOB_STATES)})),
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    not_before  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before, id);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (user_id, id);
CREATE TABLE IF NOT EXISTS outbox_cursor (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""
_COLUMNS = "id, kind, user_id, summary, state, attempts, error, detail, created_at, updated_at, not_before"


def _ts(t: datetime) -> str:
    return t.isoformat()


@dataclass(frozen=True)
class JobRecord:
    """One row of the job table."""

    id: int
    kind: str
    user_id: str
    summary: tuple[str, ...]
    state: str
    attempts: int
    error: str
    detail: str
    created_at: datetime
    updated_at: datetime
    not_before: datetime

    @classmethod
    def from_row(cls, row: Sequence[object]) -> "JobRecord":
        id_, kind, user, summary, state, attempts, error, detail, created, updated, not_before = row
        return cls(int(id_), str(kind), str(user), tuple(json.loads(str(summary))), str(state), int(attempts),  # type: ignore[call-overload]
                   str(error), str(detail), datetime.fromisoformat(str(created)), datetime.fromisoformat(str(updated)),
                   datetime.fromisoformat(str(not_before)))

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "user": self.user_id, "state": self.state,
                "attempts": self.attempts, "error": self.error, "detail": self.detail,
                "summary": list(self.summary), "created_at": _ts(self.created_at), "updated_at": _ts(self.updated_at)}


class JobStore:
    """The job table and outbox cursor in ``path`` (``":memory:"`` for a store that lives with the process)."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.path = str(path)
        self.db = SqliteDb(path)
        self.db.script(_SCHEMA, action="create the job tables")

    @classmethod
    def under(cls, home: Path) -> "JobStore":
        """The store of a pllm home: ``HOME/jobs.sqlite``."""
        home.mkdir(parents=True, exist_ok=True)
        return cls(home / "jobs.sqlite")

    # ------------------------------------------------------------------------------ writing

    def add(self, kind: str, user_id: str, summary: Iterable[str], now: datetime, *, coalesce: bool = False) -> int:
        """Queue a job; with ``coalesce``, a still-queued job of the same kind and user absorbs it (its id is returned)."""
        summary = list(summary)
        with self.db.transaction("queue a model-update job") as db:
            if coalesce:
                row = db.execute("SELECT id, summary FROM jobs WHERE kind = ? AND user_id = ? AND state = 'queued' "
                                 "ORDER BY id LIMIT 1", (kind, user_id)).fetchone()
                if row is not None:
                    merged = [*json.loads(row[1]), *summary]
                    db.execute("UPDATE jobs SET summary = ?, updated_at = ? WHERE id = ?",
                               (json.dumps(merged), _ts(now), row[0]))
                    return int(row[0])
            cur = db.execute("INSERT INTO jobs (kind, user_id, summary, state, created_at, updated_at, not_before) "
                             "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                             (kind, user_id, json.dumps(summary), _ts(now), _ts(now), _ts(now)))
            return int(cur.lastrowid or 0)

    def cursor(self, name: str = "fact_events") -> int:
        rows = self.db.rows("SELECT seq FROM outbox_cursor WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def consume(self, rows: Sequence[tuple[int, str, str]], kind: str, now: datetime, *,
                name: str = "fact_events") -> list[int]:
        """Queue one ``kind`` job per user of the log ``rows`` ``(seq, user_id, description)`` past the cursor
        (coalesced with a queued one) and move the cursor to the last seq — one transaction."""
        if not rows:
            return []
        start = self.cursor(name)
        fresh = [r for r in rows if r[0] > start]
        by_user: dict[str, list[str]] = {}
        for _seq, user, text in fresh:
            by_user.setdefault(user, []).append(text)
        ids: list[int] = []
        with self.db.transaction("consume the fact log") as db:
            (current,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox_cursor WHERE name = ?", (name,)).fetchone()
            if int(current) != start:  # another worker consumed these rows meanwhile
                return []
            for user, texts in by_user.items():
                row = db.execute("SELECT id, summary FROM jobs WHERE kind = ? AND user_id = ? AND state = 'queued' "
                                 "ORDER BY id LIMIT 1", (kind, user)).fetchone()
                if row is not None:
                    db.execute("UPDATE jobs SET summary = ?, updated_at = ? WHERE id = ?",
                               (json.dumps([*json.loads(row[1]), *texts]), _ts(now), row[0]))
                    ids.append(int(row[0]))
                    continue
                cur = db.execute("INSERT INTO jobs (kind, user_id, summary, state, created_at, updated_at, not_before) "
                                 "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                                 (kind, user, json.dumps(texts), _ts(now), _ts(now), _ts(now)))
                ids.append(int(cur.lastrowid or 0))
            db.execute("INSERT INTO outbox_cursor (name, seq) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET seq = ?",
                       (name, rows[-1][0], rows[-1][0]))
        return ids

    def claim(self, now: datetime, kinds: Callable[[str], bool] = lambda _k: True) -> JobRecord | None:
        """The oldest queued job that is due, now marked running with one more attempt (None: nothing due)."""
        with self.db.transaction("claim a job") as db:
            for row in db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'queued' AND not_before <= ? "
                                  "ORDER BY id", (_ts(now),)).fetchall():
                job = JobRecord.from_row(row)
                if not kinds(job.kind):
                    continue
                db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ? "
                           "WHERE id = ? AND state = 'queued'", (_ts(now), job.id))
                return self._get(db, job.id)
        return None

    def finish(self, job_id: int, state: str, now: datetime, *, detail: str = "", error: str = "") -> None:
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self.db.transaction("record a job's outcome") as db:
            db.execute("UPDATE jobs SET state = ?, detail = ?, error = ?, updated_at = ? WHERE id = ?",
                       (state, detail, error, _ts(now), job_id))

    def retry_later(self, job_id: int, now: datetime, delay_s: float, error: str) -> None:
        with self.db.transaction("schedule a job's retry") as db:
            db.execute("UPDATE jobs SET state = 'queued', error = ?, updated_at = ?, not_before = ? WHERE id = ?",
                       (error, _ts(now), _ts(now + timedelta(seconds=delay_s)), job_id))

    def requeue_interrupted(self, now: datetime) -> list[int]:
        """Jobs left ``running`` by a worker that died: back to the queue (their attempt stays counted)."""
        with self.db.transaction("requeue interrupted jobs") as db:
            ids = [int(r[0]) for r in db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
            db.execute("UPDATE jobs SET state = 'queued', error = 'interrupted (worker stopped while running it)', "
                       "updated_at = ?, not_before = ? WHERE state = 'running'", (_ts(now), _ts(now)))
        if ids:
            log.warning("requeued %d job(s) interrupted by a stopped worker: %s", len(ids), ids)
        return ids

    def forget(self, user_id: str) -> int:
        """Remove every job of a user (the user was forgotten); returns how many."""
        with self.db.transaction("forget a user's jobs") as db:
            return int(db.execute("DELETE FROM jobs WHERE user_id = ?", (user_id,)).rowcount)

    # ------------------------------------------------------------------------------ reading

    @staticmethod
    def _get(db: object, job_id: int) -> JobRecord:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # type: ignore[attr-defined]
        return JobRecord.from_row(row)

    def get(self, job_id: int) -> JobRecord | None:
        rows = self.db.rows(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return JobRecord.from_row(rows[0]) if rows else None

    def list(self, user_id: str | None = None, *, states: Sequence[str] = (), limit: int = 100) -> list[JobRecord]:
        """Newest first."""
        sql, args = f"SELECT {_COLUMNS} FROM jobs WHERE 1 = 1", []
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        return [JobRecord.from_row(r) for r in self.db.rows(sql, args, action="list jobs")]

    def pending(self) -> int:
        """Jobs queued or running."""
        return int(self.db.rows("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")[0][0])

    def close(self) -> None:
        with self.db.lock:
            self.db.conn.close()
