"""Per-user adapters: a user's low-rank deltas saved as a PEFT LoRA folder, versioned and published atomically.

A folder written by :func:`save_lora` is what PEFT itself loads (``PeftModel.from_pretrained(base, folder)``)
and what a LoRA-serving engine would load; ``pllm.json`` beside it records the base model it was made for.

:class:`AdapterStore` keeps one folder per user::

    root/<sha256(user_id)[:32]>/
        user.json          {"user_id": ...}  (so the store can list its users)
        v000001/           immutable version folders: adapter_config.json, adapter_model.safetensors, pllm.json
        v000002/
        PUBLISHED          "v000002" — switched with os.replace, so a reader sees the old or the new version

A version folder is complete before it gets its name (written under a temporary name, then renamed),
and only folders holding ``pllm.json`` count as versions, so a half-written version is never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from editing.errors import InvalidRequest, StaleAdapter
from editing.hooks import merge_per_module
from editing.requests import LowRankDelta

__all__ = ["save_lora", "load_lora", "read_meta", "write_meta", "move_into_place", "make_user_dir", "UserView", "VersionInfo", "AdapterStore", "FORMAT"]

log = logging.getLogger(__name__)

FORMAT = 1
_CONFIG, _WEIGHTS, _META = "adapter_config.json", "adapter_model.safetensors", "pllm.json"
_PREFIX = "base_model.model."  # PEFT's key prefix: PeftModel.base_model (LoraModel).model (the causal LM)
_VERSION_DIR = re.compile(r"^v(\d{6})$")


def _pllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pllm")
    except PackageNotFoundError:
        return "0+unknown"


def _lora_config(merged: Sequence[LowRankDelta]) -> dict[str, Any]:
    """A PEFT ``LoraConfig`` as a dict: exact module names, per-module rank, alpha = rank (scaling 1)."""
    from peft import LoraConfig

    ranks = {d.module: d.rank for d in merged}
    top = max(ranks.values())
    config = LoraConfig(r=top, lora_alpha=top, target_modules=list(ranks), rank_pattern=ranks, alpha_pattern=ranks,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", inference_mode=True)
    return config.to_dict()


def _write_folder(tmp: Path, merged: Sequence[LowRankDelta], base_model_id: str, extra: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp.mkdir(parents=True)
    if merged:
        config = _lora_config(merged)
        config["target_modules"] = sorted(config["target_modules"])  # a set in LoraConfig: not JSON
        (tmp / _CONFIG).write_text(json.dumps(config, indent=2, default=str))
        tensors: dict[str, torch.Tensor] = {}
        for d in merged:
            tensors[f"{_PREFIX}{d.module}.lora_A.weight"] = d.A.detach().to("cpu").contiguous()  # (r, in)
            tensors[f"{_PREFIX}{d.module}.lora_B.weight"] = d.B.detach().to("cpu").contiguous()  # (out, r)
        save_file(tensors, str(tmp / _WEIGHTS), metadata={"format": "pt"})
    write_meta(tmp, base_model_id, extra)  # last: its presence marks a complete folder


def write_meta(folder: Path, base_model_id: str, extra: Mapping[str, Any]) -> None:
    """Write ``pllm.json`` (base-model id, pllm version, format, time, ``extra``) into ``folder``; write it last."""
    meta = {"base_model_id": base_model_id, "pllm_version": _pllm_version(), "format": FORMAT,
            "created_at": datetime.now(timezone.utc).isoformat(), "extra": dict(extra)}
    (Path(folder) / _META).write_text(json.dumps(meta, indent=2, default=str))


def save_lora(folder: Path, deltas: Sequence[LowRankDelta], *, base_model_id: str,
              extra: Mapping[str, Any] | None = None) -> None:
    """Write ``deltas`` as a PEFT LoRA adapter folder (scaling 1 per module) plus ``pllm.json``.

    Several deltas on one module become one LoRA of the summed rank (exact sum). No deltas is allowed
    and means "the base model": the folder then holds only ``pllm.json`` (PEFT has nothing to load).
    The folder is written under a temporary name and renamed into place; an existing folder is replaced.
    """
    folder = Path(folder)
    if not isinstance(base_model_id, str) or not base_model_id:
        raise InvalidRequest(f"base_model_id must be a non-empty string, got {base_model_id!r}")
    merged = merge_per_module(deltas)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        _write_folder(tmp, merged, base_model_id, extra or {})
        move_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the complete folder ``tmp`` to ``folder``, replacing an existing one (never a half-written state)."""
    if folder.exists():
        old = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)


def read_meta(folder: Path) -> dict[str, Any]:
    """``folder``'s ``pllm.json``; :class:`InvalidRequest` when it is missing, corrupt or of another format."""
    path = Path(folder) / _META
    if not path.is_file():
        raise InvalidRequest(f"{folder} is not a pllm adapter folder: {_META} is missing (incomplete or not written "
                             "by editing.adapters.save_lora)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidRequest(f"{path} is corrupt ({err}); delete the folder and publish the adapter again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("base_model_id"), str):
        raise InvalidRequest(f"{path} is not a format-{FORMAT} pllm adapter record: {str(meta)[:200]}")
    return meta


def load_lora(folder: Path, *, base_model_id: str) -> list[LowRankDelta]:
    """Read a :func:`save_lora` folder back: one delta per module.

    Raises :class:`StaleAdapter` when the folder was made for another base model, and
    :class:`InvalidRequest` for a missing, incomplete or corrupt folder.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    if meta["base_model_id"] != base_model_id:
        raise StaleAdapter(f"adapter {folder} was made for base model {meta['base_model_id']!r}, but the loaded base "
                           f"is {base_model_id!r}: re-make it on the current base (re-run the user's edits / "
                           "adapter training) or load the base it was made for")
    if not (folder / _WEIGHTS).exists():
        return []
    try:
        tensors = load_file(str(folder / _WEIGHTS))
    except (OSError, SafetensorError) as err:
        raise InvalidRequest(f"{folder / _WEIGHTS} is corrupt ({err}); delete the folder and publish again") from None
    deltas = []
    for key in sorted(k for k in tensors if k.endswith(".lora_A.weight")):
        module = key[len(_PREFIX): -len(".lora_A.weight")]
        b_key = f"{_PREFIX}{module}.lora_B.weight"
        if not key.startswith(_PREFIX) or b_key not in tensors:
            raise InvalidRequest(f"{folder / _WEIGHTS}: {key!r} has no matching {b_key!r}")
        deltas.append(LowRankDelta(module, tensors[key], tensors[b_key]))
    return deltas


def make_user_dir(user_dir: Path, user_id: str) -> None:
    """Create a store's folder for ``user_id`` with its ``user.json`` (so the store can list its users)."""
    user_dir.mkdir(parents=True, exist_ok=True)
    info = user_dir / "user.json"
    if not info.is_file():
        tmp = user_dir / f".user-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"user_id": user_id}))
        os.replace(tmp, info)


def _check_user(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidRequest(f"user_id must be a non-empty string, got {user_id!r}")
    return user_id


@dataclass(frozen=True)
class UserView:
    """What one request runs with: a user's published deltas on the base model they were made for.

    ``extra``: the version's record (``pllm.json``'s ``extra``: which layers it holds). ``fusion``: pole
    policies fused with the user's own at decoding time (MOD, :mod:`editing.alignment.mod`) as
    ``((λ, pole deltas), ...)``; empty for a plain view. The store never sets it: the serving side adds it from
    the version's preference record (:meth:`with_fusion`).
    """

    user_id: str
    version: int
    deltas: tuple[LowRankDelta, ...]
    base_model_id: str
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    fusion: tuple[tuple[float, tuple[LowRankDelta, ...]], ...] = ()

    def __post_init__(self) -> None:
        _check_user(self.user_id)
        object.__setattr__(self, "deltas", tuple(self.deltas))  # a caller's list stays theirs
        object.__setattr__(self, "fusion", tuple((float(w), tuple(d)) for w, d in self.fusion))

    def with_fusion(self, fusion: Sequence[tuple[float, Sequence[LowRankDelta]]]) -> "UserView":
        """This view with its requests decoded from the fused policies of ``fusion`` (MOD)."""
        from dataclasses import replace

        return replace(self, fusion=tuple((float(w), tuple(d)) for w, d in fusion))


@dataclass(frozen=True)
class VersionInfo:
    """One stored version of a user's adapter, as :meth:`AdapterStore.versions` lists it."""

    version: int
    created_at: str
    base_model_id: str
    pllm_version: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    published: bool = False


class AdapterStore:
    """Versioned per-user adapters under ``root``; safe across threads, and across processes for readers.

    ``cache_size`` bounds the LRU of loaded versions (keyed by user, version and the version's write time).
    """

    def __init__(self, root: Path, *, cache_size: int = 32) -> None:
        if cache_size < 1:
            raise InvalidRequest(f"cache_size must be >= 1, got {cache_size}")
        self.root = Path(root)
        self.cache_size = cache_size
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[str, int, int], UserView] = OrderedDict()

    # ------------------------------------------------------------------------------ layout

    def _user_dir(self, user_id: str) -> Path:
        return self.root / hashlib.sha256(_check_user(user_id).encode("utf-8")).hexdigest()[:32]

    def _version_dirs(self, user_dir: Path) -> dict[int, Path]:
        """Complete versions only: a folder named ``v000123`` that holds ``pllm.json``."""
        if not user_dir.is_dir():
            return {}
        found = {}
        for child in user_dir.iterdir():
            match = _VERSION_DIR.match(child.name)
            if match and (child / _META).is_file():
                found[int(match.group(1))] = child
        return dict(sorted(found.items()))

    def _published(self, user_dir: Path) -> int | None:
        try:
            text = (user_dir / "PUBLISHED").read_text().strip()
        except FileNotFoundError:
            return None
        match = _VERSION_DIR.match(text)
        return int(match.group(1)) if match else None

    def _point_to(self, user_dir: Path, version: int) -> None:
        tmp = user_dir / f".PUBLISHED-{uuid.uuid4().hex[:8]}"
        tmp.write_text(f"v{version:06d}\n")
        os.replace(tmp, user_dir / "PUBLISHED")

    # ------------------------------------------------------------------------------ writing

    def publish(self, user_id: str, deltas: Sequence[LowRankDelta], *, base_model_id: str,
                extra: Mapping[str, Any] | None = None) -> int:
        """Store ``deltas`` as the user's next version and publish it; returns the new version number.

        An empty ``deltas`` is a valid version: "this user runs on the base model".
        """
        user_dir = self._user_dir(user_id)
        with self._lock:
            make_user_dir(user_dir, user_id)
            version = self._next_version(user_dir)
            while True:  # another process may take the same number first: its rename wins, ours moves on
                try:
                    self._save_new(user_dir / f"v{version:06d}", deltas, base_model_id, extra)
                    break
                except FileExistsError:
                    version += 1
            self._point_to(user_dir, version)
        log.info("published adapter v%d for user %s (%d deltas, base %s)", version, user_id, len(deltas), base_model_id)
        return version

    @staticmethod
    def _next_version(user_dir: Path) -> int:
        # Every v-folder counts here, complete or not: a number is never reused for different contents.
        numbers = [int(m.group(1)) for c in user_dir.iterdir() if (m := _VERSION_DIR.match(c.name))]
        return max(numbers, default=0) + 1

    @staticmethod
    def _save_new(folder: Path, deltas: Sequence[LowRankDelta], base_model_id: str,
                  extra: Mapping[str, Any] | None) -> None:
        """Like :func:`save_lora`, but never replaces: an existing folder raises ``FileExistsError``."""
        if folder.exists():
            raise FileExistsError(folder)
        tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
        save_lora(tmp, deltas, base_model_id=base_model_id, extra=extra)
        try:
            os.rename(tmp, folder)  # fails if another writer created ``folder`` meanwhile (non-empty target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(folder) from None

    def rollback(self, user_id: str, version: int | None = None) -> int:
        """Publish ``version`` (or the version before the published one) again; returns it."""
        user_dir = self._user_dir(user_id)
        with self._lock:
            versions = self._version_dirs(user_dir)
            current = self._published(user_dir)
            if version is None:
                earlier = [v for v in versions if current is None or v < current]
                if not earlier:
                    raise InvalidRequest(f"user {user_id!r} has no version before v{current}: nothing to roll back to")
                version = earlier[-1]
            elif version not in versions:
                raise InvalidRequest(f"user {user_id!r} has no version {version}; stored: {list(versions)}")
            self._point_to(user_dir, version)
        log.info("rolled user %s back to adapter v%d", user_id, version)
        return version

    def forget(self, user_id: str) -> None:
        """Remove every version of the user's adapter (privacy: ``forget(user)``)."""
        user_dir = self._user_dir(user_id)
        with self._lock:
            for key in [k for k in self._cache if k[0] == user_id]:
                del self._cache[key]
            if user_dir.exists():
                trash = self.root / f".forget-{uuid.uuid4().hex[:8]}"
                user_dir.rename(trash)  # readers see the user gone at once, then the files go
                shutil.rmtree(trash)

    # ------------------------------------------------------------------------------ reading

    def versions(self, user_id: str) -> list[VersionInfo]:
        """The user's complete versions, oldest first (empty when the user has none)."""
        user_dir = self._user_dir(user_id)
        current = self._published(user_dir)
        infos = []
        for number, folder in self._version_dirs(user_dir).items():
            try:
                meta = read_meta(folder)
            except InvalidRequest as err:
                log.warning("user %s: skipping unreadable version %d: %s", user_id, number, err)
                continue
            infos.append(VersionInfo(version=number, created_at=str(meta.get("created_at", "")),
                                     base_model_id=meta["base_model_id"],
                                     pllm_version=str(meta.get("pllm_version", "")),
                                     extra=dict(meta.get("extra") or {}), published=number == current))
        return infos

    def view(self, user_id: str, *, base_model_id: str) -> UserView | None:
        """The user's published version on ``base_model_id``, or ``None`` (no adapter, or none that can serve).

        ``None`` with a warning when the published version was made for another base model or is unreadable:
        a broken adapter must not break the user's reply, which falls back to the base. The pointer is read
        on every call, so a version published by another process serves from the next
        request on; loaded versions are cached.
        """
        user_dir = self._user_dir(user_id)
        version = self._published(user_dir)
        if version is None:
            return None
        folder = user_dir / f"v{version:06d}"
        try:
            stamp = (folder / _META).stat().st_mtime_ns
        except FileNotFoundError:
            log.warning("user %s: PUBLISHED points at v%d, which is missing; serving the base model", user_id, version)
            return None
        key = (user_id, version, stamp)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is None:
            cached = self._load(user_id, version, folder, base_model_id)
            if cached is None:
                return None
            with self._lock:
                self._cache[key] = cached
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if cached.base_model_id != base_model_id:
            log.warning("user %s: adapter v%d was made for %r, not %r; serving the base model until it is re-made",
                        user_id, version, cached.base_model_id, base_model_id)
            return None
        return cached

    def _load(self, user_id: str, version: int, folder: Path, base_model_id: str) -> UserView | None:
        try:
            deltas = load_lora(folder, base_model_id=base_model_id)
            extra = read_meta(folder).get("extra") or {}
        except InvalidRequest as err:  # StaleAdapter included
            log.warning("user %s, adapter v%d: %s; serving the base model", user_id, version, err)
            return None
        return UserView(user_id=user_id, version=version, deltas=tuple(deltas), base_model_id=base_model_id,
                        extra=dict(extra) if isinstance(extra, Mapping) else {})

    def users(self) -> list[str]:
        """Every user id with a folder in this store (sorted)."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            info = child / "user.json"
            if child.is_dir() and info.is_file():
                try:
                    found.append(json.loads(info.read_text())["user_id"])
                except (OSError, ValueError, KeyError):
                    log.warning("unreadable %s; skipped", info)
        return sorted(found)
