"""API keys of ``pllm serve``: scoped to users, stored hashed.

A key is ``pllm-<key id>-<secret>``; the store (``HOME/keys.sqlite``) keeps the key id, a name, the scope and the
SHA-256 of the whole key — never the key itself, which is shown once when it is made (``pllm keys create``). A
key's scope is a set of user ids, or ``*`` (an admin key: every user, and the routes that span users). Keys are
random 256-bit secrets, so a plain SHA-256 (not a slow password hash) is the right digest: nothing to brute-force.
Verification compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from memory.validation import check_user_id

__all__ = ["ADMIN", "ApiKey", "KeyStore", "NewKey"]

ADMIN = "*"
_PREFIX = "pllm"


@dataclass(frozen=True)
class ApiKey:
    """A stored key (no secret): who it is for and what it may reach."""

    key_id: str
    name: str
    users: tuple[str, ...]  # ("*",) for an admin key
    created_at: str
    revoked: bool = False

    @property
    def admin(self) -> bool:
        return ADMIN in self.users

    def allows(self, user_id: str) -> bool:
        """Whether this key may act for ``user_id``."""
        return self.admin or user_id in self.users


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``secret`` is the whole key, shown this once."""

    key: ApiKey
    secret: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyStore:
    """The API keys of one pllm home (SQLite; safe to share between the server's threads)."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                         "digest TEXT NOT NULL, users TEXT NOT NULL, created_at TEXT NOT NULL, "
                         "revoked INTEGER NOT NULL DEFAULT 0)")

    @classmethod
    def under(cls, home: Path) -> "KeyStore":
        return cls(Path(home) / "keys.sqlite")

    def create(self, users: Iterable[str], *, name: str = "") -> NewKey:
        """Make a key for ``users`` (``["*"]``: admin). Raises ``ValueError`` for no users or a bad user id."""
        scope = sorted(set(users))
        if not scope:
            raise ValueError("a key needs at least one user (--user NAME, repeatable) or --admin")
        if ADMIN in scope:
            scope = [ADMIN]
        else:
            scope = [check_user_id(u) for u in scope]
        key_id = secrets.token_hex(4)
        secret = f"{_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock:
            self._db.execute("INSERT INTO api_keys (key_id, name, digest, users, created_at) VALUES (?, ?, ?, ?, ?)",
                             (key_id, name, _digest(secret), json.dumps(scope), created))
        return NewKey(ApiKey(key_id, name, tuple(scope), created), secret)

    def verify(self, secret: str | None) -> ApiKey | None:
        """The live key ``secret`` is, or None (unknown, malformed or revoked)."""
        if not secret or not isinstance(secret, str):
            return None
        parts = secret.split("-", 2)
        if len(parts) != 3 or parts[0] != _PREFIX:
            return None
        with self._lock:
            row = self._db.execute("SELECT key_id, name, digest, users, created_at, revoked FROM api_keys "
                                   "WHERE key_id = ?", (parts[1],)).fetchone()
        if row is None or row[5] or not hmac.compare_digest(row[2], _digest(secret)):
            return None
        return ApiKey(row[0], row[1], tuple(json.loads(row[3])), row[4], bool(row[5]))

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute("SELECT key_id, name, users, created_at, revoked FROM api_keys "
                                    "ORDER BY created_at, key_id").fetchall()
        return [ApiKey(r[0], r[1], tuple(json.loads(r[2])), r[3], bool(r[4])) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by id; False when there is no such live key."""
        with self._lock:
            cur = self._db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ? AND revoked = 0", (key_id,))
        return cur.rowcount > 0

    def active(self) -> Sequence[ApiKey]:
        return [k for k in self.list() if not k.revoked]

    def close(self) -> None:
        with self._lock:
            self._db.close()
