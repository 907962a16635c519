"""Every version of every user's trained (style) adapter, kept so a refresh can continue and a rollback can return.

The *served* adapter of a user is the version :class:`~editing.adapters.AdapterStore` publishes (edits and the
style layer combined); this store keeps the style layer's own versions — PEFT folders written by
:func:`~editing.oppu.io.save_adapter`, which record the base model, the training config and what they were
trained on::

    root/<sha256(user_id)[:32]>/
        user.json          {"user_id": ...}
        v000001/           adapter_config.json, adapter_model.safetensors, pllm.json (written last)
        v000002/

Versions are immutable and numbered in order; a half-written one (no ``pllm.json``) does not count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editing.adapters import make_user_dir, read_meta
from editing.errors import InvalidRequest
from editing.oppu.io import load_adapter, save_adapter
from editing.oppu.train import TrainedAdapter

__all__ = ["StyleStore", "StyleVersion"]

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v(\d{6})$")


@dataclass(frozen=True)
class StyleVersion:
    """One stored style-adapter version: its number, base model, kind and what ``pllm.json`` says of it."""

    version: int
    base_model_id: str
    created_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.extra.get("kind", "")).removeprefix("oppu_")


def _check_user(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidRequest(f"user_id must be a non-empty string, got {user_id!r}")
    return user_id


class StyleStore:
    """Versioned per-user trained adapters under ``root`` (thread-safe; a version is complete or absent)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def _user_dir(self, user_id: str) -> Path:
        return self.root / hashlib.sha256(_check_user(user_id).encode("utf-8")).hexdigest()[:32]

    def _folders(self, user_id: str) -> dict[int, Path]:
        user_dir = self._user_dir(user_id)
        if not user_dir.is_dir():
            return {}
        found = {int(m.group(1)): c for c in user_dir.iterdir()
                 if (m := _VERSION_DIR.match(c.name)) and (c / "pllm.json").is_file()}
        return dict(sorted(found.items()))

    def save(self, user_id: str, adapter: TrainedAdapter) -> int:
        """Store ``adapter`` as the user's next version; returns its number."""
        user_dir = self._user_dir(user_id)
        with self._lock:
            make_user_dir(user_dir, user_id)
            numbers = [int(m.group(1)) for c in user_dir.iterdir() if (m := _VERSION_DIR.match(c.name))]
            version = max(numbers, default=0) + 1
            save_adapter(user_dir / f"v{version:06d}", adapter)
        log.info("saved %s style adapter v%d for %s (%d examples, %.1f s)", adapter.kind, version, user_id,
                 adapter.n_examples, adapter.seconds)
        return version

    def versions(self, user_id: str) -> list[StyleVersion]:
        """The user's versions, oldest first (an unreadable one is skipped with a warning)."""
        out = []
        for number, folder in self._folders(user_id).items():
            try:
                meta = read_meta(folder)
            except InvalidRequest as err:
                log.warning("user %s: skipping unreadable style adapter v%d: %s", user_id, number, err)
                continue
            out.append(StyleVersion(number, meta["base_model_id"], str(meta.get("created_at", "")),
                                    dict(meta.get("extra") or {})))
        return out

    def latest(self, user_id: str) -> StyleVersion | None:
        versions = self.versions(user_id)
        return versions[-1] if versions else None

    def load(self, user_id: str, version: int, *, base_model_id: str) -> TrainedAdapter:
        """Version ``version`` of the user's adapter; :class:`~editing.errors.StaleAdapter` on another base."""
        folder = self._folders(user_id).get(version)
        if folder is None:
            raise InvalidRequest(f"user {user_id!r} has no style adapter v{version}; stored: "
                                 f"{list(self._folders(user_id))}")
        return load_adapter(folder, base_model_id=base_model_id)

    def users(self) -> list[str]:
        """Every user id with a folder here (sorted)."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            try:
                found.append(json.loads((child / "user.json").read_text())["user_id"])
            except (OSError, ValueError, KeyError):
                continue
        return sorted(found)

    def forget(self, user_id: str) -> int:
        """Remove every version of the user's style adapter; returns how many there were."""
        user_dir = self._user_dir(user_id)
        with self._lock:
            n = len(self._folders(user_id))
            if user_dir.exists():
                trash = self.root / f".forget-{uuid.uuid4().hex[:8]}"
                user_dir.rename(trash)
                shutil.rmtree(trash)
        return n
