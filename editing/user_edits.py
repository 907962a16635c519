"""The registry of every user's knowledge edits: which are active, replaced, removed, undone or rejected.

One SQLite file (``HOME/edits.sqlite``) with a row per edit, and the edit's tensors (its low-rank deltas
and the keys it wrote, which later edits preserve) in ``HOME/edits/<user folder>/<edit id>.safetensors``.
A user has at most one **active** edit per slot ``key`` (subject | relation | category): recording a new
edit for a slot marks the old one ``replaced``, in the same transaction. ``undone`` edits remember their
fact, so the reconciling editor never writes that fact again; ``rejected`` ones (failed their check)
likewise, until the fact changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from editing.errors import InvalidRequest
from editing.requests import LowRankDelta

__all__ = ["EditRecord", "EditRegistry", "EDIT_STATES", "UnknownEdit"]

EDIT_STATES = ("active", "replaced", "removed", "undone", "rejected")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS edits (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    key         TEXT NOT NULL,
    fact_id     TEXT NOT NULL,
    relation    TEXT NOT NULL,
    target      TEXT NOT NULL,
    question    TEXT NOT NULL,
    method      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in EDIT_STATES)})),
    metrics     TEXT NOT NULL CHECK (json_valid(metrics)),
    note        TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS edits_user ON edits (user_id, state, key);
"""
_COLUMNS = "id, user_id, key, fact_id, relation, target, question, method, state, metrics, note, created_at, updated_at"


class UnknownEdit(InvalidRequest):
    """No edit with that id for that user."""


def user_folder_name(user_id: str) -> str:
    """A file-system-safe folder name for any user id (the id itself may hold any character)."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class EditRecord:
    """One knowledge edit of one user."""

    id: str
    user_id: str
    key: str  # the slot: at most one active edit per key
    fact_id: str  # the memory fact it writes
    relation: str
    target: str
    question: str  # the chat-form question it answers
    method: str
    state: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    note: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "EditRecord":
        (id_, user, key, fact_id, relation, target, question, method, state, metrics, note, created,
         updated) = row
        return cls(id_, user, key, fact_id, relation, target, question, method, state, json.loads(metrics), note,
                   datetime.fromisoformat(created), datetime.fromisoformat(updated))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user_id, "key": self.key, "fact_id": self.fact_id,
                "relation": self.relation, "target": self.target, "question": self.question, "method": self.method,
                "state": self.state, "metrics": dict(self.metrics), "note": self.note,
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


class EditRegistry:
    """Edits of every user under ``home`` (``edits.sqlite`` + ``edits/``)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.folder = self.home / "edits"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.home / "edits.sqlite", timeout=30, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    # ------------------------------------------------------------------------------ tensors

    def _tensor_path(self, user_id: str, edit_id: str) -> Path:
        return self.folder / user_folder_name(user_id) / f"{edit_id}.safetensors"

    def save_tensors(self, user_id: str, edit_id: str, deltas: Sequence[LowRankDelta],
                     keys: Mapping[str, torch.Tensor]) -> None:
        """Write an edit's deltas and keys (before its row is recorded: a row always has its tensors)."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        modules: list[str] = []
        for i, d in enumerate(deltas):
            tensors[f"delta.{i}.A"] = d.A.detach().float().cpu().contiguous()
            tensors[f"delta.{i}.B"] = d.B.detach().float().cpu().contiguous()
            modules.append(d.module)
        key_modules = sorted(keys)
        for i, name in enumerate(key_modules):
            tensors[f"key.{i}"] = keys[name].detach().float().cpu().contiguous()
        path = self._tensor_path(user_id, edit_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"modules": json.dumps(modules), "key_modules": json.dumps(key_modules)})
        tmp.replace(path)

    def load_tensors(self, record: EditRecord) -> tuple[list[LowRankDelta], dict[str, torch.Tensor]]:
        """The edit's deltas and the keys it wrote (per module)."""
        from safetensors import safe_open

        path = self._tensor_path(record.user_id, record.id)
        if not path.is_file():
            raise InvalidRequest(f"the tensors of edit {record.id} are missing ({path}); undo it with `pllm edit undo "
                                 f"--user {record.user_id} {record.id}` and let the next job redo the fact")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            modules, key_modules = json.loads(meta["modules"]), json.loads(meta["key_modules"])
            deltas = [LowRankDelta(m, f.get_tensor(f"delta.{i}.A"), f.get_tensor(f"delta.{i}.B"))
                      for i, m in enumerate(modules)]
            keys = {m: f.get_tensor(f"key.{i}") for i, m in enumerate(key_modules)}
        return deltas, keys

    # ------------------------------------------------------------------------------ rows

    def record(self, records: Iterable[EditRecord], *, retire: Mapping[str, str] = {},  # noqa: B006 - read only
               now: datetime) -> None:
        """In one transaction: add ``records`` (an active one replaces the user's active edit of its key) and set
        the states in ``retire`` (edit id → new state)."""
        ts = now.isoformat()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for edit_id, state in retire.items():
                    self._db.execute("UPDATE edits SET state = ?, updated_at = ? WHERE id = ?", (state, ts, edit_id))
                for r in records:
                    if r.state == "active":
                        self._db.execute("UPDATE edits SET state = 'replaced', updated_at = ? WHERE user_id = ? AND "
                                         "key = ? AND state = 'active'", (ts, r.user_id, r.key))
                    self._db.execute(f"INSERT INTO edits ({_COLUMNS}) VALUES ({','.join('?' * 13)})",
                                     (r.id, r.user_id, r.key, r.fact_id, r.relation, r.target, r.question, r.method,
                                      r.state, json.dumps(dict(r.metrics)), r.note, ts, ts))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def set_state(self, user_id: str, edit_id: str, state: str, now: datetime, *, note: str = "") -> EditRecord:
        if state not in EDIT_STATES:
            raise InvalidRequest(f"unknown edit state {state!r}; one of {EDIT_STATES}")
        record = self.get(user_id, edit_id)
        with self._lock:
            self._db.execute("UPDATE edits SET state = ?, note = ?, updated_at = ? WHERE id = ?",
                             (state, note or record.note, now.isoformat(), edit_id))
        return self.get(user_id, edit_id)

    def get(self, user_id: str, edit_id: str) -> EditRecord:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM edits WHERE id = ? AND user_id = ?",
                                   (edit_id, user_id)).fetchone()
        if row is None:
            raise UnknownEdit(f"user {user_id!r} has no edit {edit_id!r}; `pllm edit list --user {user_id}` lists them")
        return EditRecord.from_row(row)

    def list(self, user_id: str, *, states: Sequence[str] = ()) -> list[EditRecord]:
        """The user's edits, oldest first (all states unless ``states`` narrows them)."""
        sql, args = f"SELECT {_COLUMNS} FROM edits WHERE user_id = ?", [user_id]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at, rowid", args).fetchall()
        return [EditRecord.from_row(r) for r in rows]

    def active(self, user_id: str) -> list[EditRecord]:
        return self.list(user_id, states=("active",))

    def users(self) -> list[str]:
        with self._lock:
            return [u for (u,) in self._db.execute("SELECT DISTINCT user_id FROM edits ORDER BY user_id")]

    def forget(self, user_id: str) -> int:
        """Delete every edit of the user, rows and tensors; returns how many rows."""
        with self._lock:
            n = self._db.execute("DELETE FROM edits WHERE user_id = ?", (user_id,)).rowcount
        shutil.rmtree(self.folder / user_folder_name(user_id), ignore_errors=True)
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()
