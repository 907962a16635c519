"""Episodic and semantic memory in Chroma, one collection per user and store, every operation scoped to a user.

Layout: a store named ``base`` keeps user ``u``'s records in collection ``f"{base}-{sha256(u)[:24]}"``
(user ids never appear in collection names). A collection is created by the user's first write, never by
a read (``get``/``count``/``query`` of an unknown user → empty), and dropped whole by ``delete_user``.
Searches need no user filter (Chroma 1.5 scans every record of the user for a filtered search: 30-60 ms
at 10k records, 2 ms unfiltered). Open collection handles are kept in a bounded LRU per store.

Invariants:

* **Isolation** — every read, query, update and delete goes to the user's own collection, and returned
  records are checked to carry that ``user_id``; an id that belongs to another user is invisible (reads)
  or refused (writes, when the store keeps its id directory: ``unique_ids=True``, the default — see
  :class:`_UserScopedCollection`). No API returns another user's data.
* **Exact round trip** — ``get`` returns the records that were added (``Episode`` in == ``Episode`` out,
  aware UTC times, to the microsecond). Times are kept twice in metadata: ``at`` as float epoch seconds for
  ``$gte``/``$lte`` filters and ``at_us`` as integer microseconds for exact reconstruction.
* **Chroma-legal metadata** — only ``str | int | float | bool`` values; tuples travel as JSON strings.
* **Our vectors only** — every write passes vectors (given or computed by the injected embedder); Chroma
  never embeds anything itself, and the collection's embedding function is ours (see ``chroma_backend``).

Similarity in :class:`Hit` is cosine similarity, ``1 - cosine distance``, in ``[-1, 1]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, get_args

import numpy as np

from memory.chroma_backend import SPACE, _check_name, chroma_errors, open_collection, paged_get
from memory.clock import to_utc
from memory.embeddings import ChromaEmbeddingFunction, Embedder, register_chroma_embedding_function
from memory.errors import InvalidInput, StoreError
from memory.records import Episode

if TYPE_CHECKING:  # pragma: no cover
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ["Hit", "MemoryItem", "MemoryKind", "EpisodicStore", "SemanticStore"]

MemoryKind = Literal["fact", "preference", "summary"]
_KINDS: tuple[str, ...] = get_args(MemoryKind)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SCALARS = (str, int, float, bool)
_DIGEST_HEX = 24  # hex chars of sha256(user_id) in a collection name (96 bits: collisions are not a concern)
_OWNER_DIM = 4  # dims of the directory's placeholder vectors (derived from the id; never searched)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Hit:
    """One dense-search result."""

    id: str
    text: str
    similarity: float  # cosine similarity in [-1, 1] (1 - cosine distance)
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class MemoryItem:
    """A document of the semantic store: a fact, a preference or a summary of past sessions."""

    id: str
    user_id: str
    kind: MemoryKind
    text: str
    at: datetime  # event time it refers to (facts: valid_from; summaries: end of the summarized span)
    source_episode_ids: tuple[str, ...] = ()
    fact_id: str | None = None  # for fact/preference items: the graph Fact.id
    current: bool = True  # False once the fact is superseded/retracted (kept, filtered out by default)

    def __post_init__(self) -> None:
        for name in ("id", "user_id", "text"):
            _check_str(name, getattr(self, name))
        if self.kind not in _KINDS:
            raise InvalidInput(f"MemoryItem.kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.at, datetime):
            raise InvalidInput(f"MemoryItem.at must be a datetime, got {type(self.at).__name__}")
        object.__setattr__(self, "at", to_utc(self.at))
        if isinstance(self.source_episode_ids, str):
            raise InvalidInput("MemoryItem.source_episode_ids must be a sequence of ids, not one string")
        object.__setattr__(self, "source_episode_ids", tuple(self.source_episode_ids))
        if self.fact_id is not None:
            _check_str("fact_id", self.fact_id)
        if not isinstance(self.current, bool):
            raise InvalidInput(f"MemoryItem.current must be a bool, got {type(self.current).__name__}")


# ----------------------------------------------------------------------------------- helpers


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string, got {value!r}")


def _time_fields(name: str, when: datetime) -> dict[str, float | int]:
    """``{name: epoch seconds (float, for filters), name_us: epoch microseconds (int, exact)}``."""
    delta = to_utc(when) - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return {name: micros / 1e6, f"{name}_us": micros}


def _read_time(meta: Mapping[str, Any], name: str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(meta[f"{name}_us"]))


def _where_value(value: Any) -> Any:
    """Datetimes in a ``where`` filter become epoch seconds, matching how times are stored."""
    if isinstance(value, datetime):
        return _time_fields("t", value)["t"]
    if isinstance(value, Mapping):
        return {k: _where_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_where_value(v) for v in value]
    return value


def _and(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    # Chroma's $and needs at least two operands.
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


# -------------------------------------------------------------------------------- base class


class _UserScopedCollection:
    """Records of many users, one Chroma collection per user; every operation is scoped to one user.

    Subclasses say how a record becomes (id, document, metadata) and back.

    ``unique_ids=True`` (default) keeps ids unique across users, as a single shared collection did: a
    directory collection ``f"{base}-owners"`` maps each record id to its owner's digest, and an add of an
    id that another user owns is refused. It costs one more Chroma write per add (≈ 20 ms on a disk that
    fsyncs slowly). A caller that already guarantees unique ids (``Memory``: uuid ids and a SQLite primary
    key) passes ``unique_ids=False``; users' records then still never meet (separate collections).
    """

    # metadata keys a caller may not rewrite through update_metadata (they define the record)
    _PROTECTED: ClassVar[frozenset[str]] = frozenset({"user_id"})
    # metadata keys that survive a re-add of the same id (usage statistics, not content)
    _PRESERVED_ON_READD: ClassVar[tuple[str, ...]] = ()

    def __init__(self, client: "ClientAPI", embedder: Embedder, *, name: str, unique_ids: bool = True,
                 max_open: int = 128) -> None:
        _check_name(f"{name}-{'0' * _DIGEST_HEX}")  # every user's collection name must be legal
        if not isinstance(max_open, int) or max_open < 1:
            raise InvalidInput(f"max_open must be a positive int, got {max_open!r}")
        self._client = client
        self._embedder = embedder
        self._base = name
        self._max_open = max_open
        self._open: OrderedDict[str, "Collection"] = OrderedDict()  # user_id → handle, least recent first
        self._lock = threading.Lock()
        self._owners = open_collection(client, f"{name}-owners", embedder) if unique_ids else None
        with chroma_errors("read the server's maximum batch size"):
            self._max_batch = int(client.get_max_batch_size())

    @property
    def name(self) -> str:
        """The store's base name (each user's collection is ``f"{name}-{digest}"``)."""
        return self._base

    def collection_name(self, user_id: str) -> str:
        """The name of the user's collection (whether or not it exists yet)."""
        _check_str("user_id", user_id)
        return f"{self._base}-{_digest(user_id)}"

    def collection_id(self, user_id: str) -> str | None:
        """The Chroma id of the user's collection, or None if the user has none (for storage maintenance)."""
        handle = self._handle(user_id, create=False)
        return None if handle is None else str(handle.id)

    # ------------------------------------------------------------------------- collections

    def _handle(self, user_id: str, *, create: bool) -> "Collection | None":
        """The user's collection: cached, else opened (created only if ``create``); None if it does not exist."""
        with self._lock:
            handle = self._open.get(user_id)
            if handle is not None:
                self._open.move_to_end(user_id)
                return handle
        name = self.collection_name(user_id)
        opener = open_collection if create else _existing
        handle = opener(self._client, name, self._embedder)
        if handle is not None:
            with self._lock:
                self._open[user_id] = handle
                while len(self._open) > self._max_open:
                    self._open.popitem(last=False)
        return handle

    def _drop_handle(self, user_id: str) -> None:
        with self._lock:
            self._open.pop(user_id, None)

    def _use(self, user_id: str, action: str, call: "Callable[[Collection], _T]", *, create: bool) -> "_T | None":
        """``call(user's collection)``; None when the user has none and ``create`` is False.

        A cached handle goes stale when another store object or process deleted the collection; the
        call is then retried once on a freshly opened one.
        """
        for attempt in (0, 1):
            handle = self._handle(user_id, create=create)
            if handle is None:
                return None
            try:
                with chroma_errors(f"{action} in {handle.name}"):
                    return call(handle)
            except StoreError as exc:
                if attempt or not _is_not_found(exc.__cause__):
                    raise
                self._drop_handle(user_id)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- scoping and validation

    @staticmethod
    def _scope(user_id: str, *conditions: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The ``where`` filter for a read of the user's collection (None: no condition), ``user_id`` checked.

        No ``user_id`` condition: the collection holds only the user's records.
        """
        _check_str("user_id", user_id)
        parts: list[dict[str, Any]] = []
        for condition in conditions:
            if condition is None:
                continue
            if not isinstance(condition, Mapping) or not condition:
                raise InvalidInput(f"where must be a non-empty mapping in Chroma's filter syntax, got {condition!r}")
            parts.append(dict(_where_value(condition)))
        return _and(parts) if parts else None

    def _vectors_for(self, texts: Sequence[str], vectors: np.ndarray | None) -> np.ndarray:
        """``(n, dim)`` float32 rows: the given ``vectors`` checked, or ``texts`` embedded."""
        if vectors is None:
            return self._embedder.embed(list(texts))
        array = np.asarray(vectors, dtype=np.float32)
        if array.shape != (len(texts), self._embedder.dim):
            raise InvalidInput(
                f"vectors must have shape ({len(texts)}, {self._embedder.dim}) — one row per record — "
                f"got {array.shape}"
            )
        return array

    def _query_vector(self, vector: np.ndarray) -> list[float]:
        array = np.asarray(vector, dtype=np.float32).reshape(-1)  # (dim,) from (dim,) or (1, dim)
        if array.shape != (self._embedder.dim,) or not np.isfinite(array).all():
            raise InvalidInput(
                f"query vector must be {self._embedder.dim} finite numbers, got shape {np.shape(vector)}"
            )
        return array.tolist()

    # ---------------------------------------------------------------------------- writes

    def _upsert(
        self, ids: list[str], texts: list[str], metadatas: list[dict[str, Any]], vectors: np.ndarray | None
    ) -> None:
        """Insert or replace records by id, each in its user's collection.

        Everything is checked before anything is written: duplicate ids, vector shapes, and (with the id
        directory) ids that belong to another user — refused, nothing written.
        """
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise InvalidInput(f"the same id appears twice in one add: {dupes[:5]}; add each record once")
        rows = self._vectors_for(texts, vectors)  # (n, dim)
        groups: dict[str, list[int]] = {}
        for index, meta in enumerate(metadatas):
            groups.setdefault(meta["user_id"], []).append(index)
        unregistered = self._check_owners(ids, metadatas)
        for user_id, indices in groups.items():
            self._keep_preserved(user_id, [ids[i] for i in indices], [metadatas[i] for i in indices])
        self._register(unregistered)
        for user_id, indices in groups.items():
            self._write(user_id, [ids[i] for i in indices], [texts[i] for i in indices],
                        [metadatas[i] for i in indices], rows[indices])

    def _keep_preserved(self, user_id: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Copy the ``_PRESERVED_ON_READD`` keys of records that already exist into their new metadata."""
        existing = self.metadata(user_id, ids)
        for record_id, meta in zip(ids, metadatas):
            old = existing.get(record_id)
            if old is not None:
                meta.update({k: old[k] for k in self._PRESERVED_ON_READD if k in old})

    def _write(self, user_id: str, ids: list[str], texts: list[str], metadatas: list[dict[str, Any]],
               rows: np.ndarray) -> None:
        for start in range(0, len(ids), self._max_batch):
            stop = start + self._max_batch
            self._use(user_id, f"write {len(ids[start:stop])} records", lambda c: c.upsert(
                ids=ids[start:stop],
                documents=texts[start:stop],
                metadatas=metadatas[start:stop],  # type: ignore[arg-type]
                embeddings=rows[start:stop],  # type: ignore[arg-type]
            ), create=True)

    # ------------------------------------------------------------------------ id directory

    def _check_owners(self, ids: list[str], metadatas: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Refuse ids another user owns; return ``(id, owner digest)`` of the ids not yet in the directory."""
        if self._owners is None:
            return []
        owners: dict[str, str] = {}
        for start in range(0, len(ids), self._max_batch):
            with chroma_errors(f"read {self._owners.name}"):
                got = self._owners.get(ids=ids[start : start + self._max_batch], include=["metadatas"])
            owners.update({i: str((m or {}).get("owner")) for i, m in zip(got["ids"], got["metadatas"] or [])})
        wanted = [(i, _digest(m["user_id"])) for i, m in zip(ids, metadatas)]
        for record_id, digest in wanted:
            if owners.get(record_id, digest) != digest:
                raise InvalidInput(f"id {record_id!r} already belongs to another user; give the record a fresh id")
        return [(i, d) for i, d in wanted if i not in owners]

    def _register(self, entries: list[tuple[str, str]]) -> None:
        """Record ``(id, owner digest)`` pairs in the directory (written before the records themselves, so a
        failed add leaves at most an id reserved for its own user)."""
        if self._owners is None or not entries:
            return
        for start in range(0, len(entries), self._max_batch):
            chunk = entries[start : start + self._max_batch]
            with chroma_errors(f"write {self._owners.name}"):
                chunk_ids = [i for i, _ in chunk]
                self._owners.upsert(ids=chunk_ids, embeddings=_placeholders(chunk_ids),  # type: ignore[arg-type]
                                    metadatas=[{"owner": d} for _, d in chunk])

    def _unregister(self, ids: list[str] | None, user_id: str) -> None:
        """Remove ids (None: all of the user's) from the directory."""
        if self._owners is None or ids == []:
            return
        with chroma_errors(f"delete from {self._owners.name}"):
            if ids is None:
                self._owners.delete(where={"owner": _digest(user_id)})
            else:
                for start in range(0, len(ids), self._max_batch):
                    self._owners.delete(ids=ids[start : start + self._max_batch])

    def _merge_metadata(self, user_id: str, updates: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge ``updates[id]`` into each record's metadata. All ids must be the user's; checked first."""
        if not isinstance(updates, Mapping):
            raise InvalidInput(f"updates must map record ids to metadata changes, got {type(updates).__name__}")
        if not updates:
            return
        for record_id, changes in updates.items():
            self._check_changes(record_id, changes)
        current = self.metadata(user_id, list(updates))
        missing = [i for i in updates if i not in current]
        if missing:
            raise InvalidInput(f"no record of user {user_id!r} has id(s) {missing[:5]}; nothing was updated")
        ids = list(updates)
        merged = [{**current[i], **dict(updates[i])} for i in ids]
        for start in range(0, len(ids), self._max_batch):
            stop = start + self._max_batch
            self._use(user_id, "update metadata", lambda c: c.update(
                ids=ids[start:stop], metadatas=merged[start:stop]), create=False)  # type: ignore[arg-type]

    def _check_changes(self, record_id: str, changes: Mapping[str, Any]) -> None:
        if not isinstance(changes, Mapping):
            raise InvalidInput(f"updates[{record_id!r}] must be a mapping of metadata keys to values")
        for key, value in changes.items():
            if key in self._PROTECTED or key.endswith("_us"):
                raise InvalidInput(f"metadata key {key!r} defines the record and cannot be updated; re-add the record")
            if not isinstance(value, _SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
                raise InvalidInput(f"metadata {key!r} must be a finite str, int, float or bool, got {value!r}")

    # ----------------------------------------------------------------------------- reads

    def _get(
        self, user_id: str, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """``(id, document, metadata)`` of the user's records (optionally only ``ids``), unordered."""
        scope = self._scope(user_id, where)
        if ids is not None:
            if isinstance(ids, str):
                raise InvalidInput("ids must be a sequence of ids, not one string")
            if len(ids) == 0:
                return []
        wanted = list(ids) if ids is not None else None
        got = self._use(user_id, "read", lambda c: paged_get(c, wanted, scope, ["documents", "metadatas"]),
                        create=False) or []
        rows = [(i, d or "", dict(m or {})) for i, d, m in got]
        return [r for r in rows if r[2].get("user_id") == user_id]

    def _search(self, user_id: str, vector: np.ndarray, k: int, where: dict[str, Any] | None) -> list[Hit]:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidInput(f"k must be a positive int, got {k!r}")
        query = self._query_vector(vector)
        # Chroma 1.5 returns only what matches when fewer than k records do (checked embedded and server).
        got = self._use(user_id, "query", lambda c: c.query(
            query_embeddings=[query],  # type: ignore[arg-type]
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        ), create=False)
        if got is None:
            return []
        ids = got["ids"][0]
        docs = (got["documents"] or [[]])[0]
        metas = (got["metadatas"] or [[]])[0]
        dists = (got["distances"] or [[]])[0]
        return [
            Hit(id=i, text=d or "", similarity=1.0 - float(dist), metadata=self._public_metadata(dict(m or {})))
            for i, d, m, dist in zip(ids, docs, metas, dists)
            if (m or {}).get("user_id") == user_id
        ]

    def _public_metadata(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Metadata as callers see it in a :class:`Hit` (subclasses decode JSON fields)."""
        return meta

    # ------------------------------------------------------------------ shared public API

    def metadata(self, user_id: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored metadata by id, for those ``ids`` that are the user's (others are absent)."""
        return {i: meta for i, _, meta in self._get(user_id, ids)}

    def ids(self, user_id: str) -> list[str]:
        """All record ids of the user, sorted."""
        _check_str("user_id", user_id)
        got = self._use(user_id, "read", lambda c: paged_get(c, None, None, []), create=False) or []
        return sorted(i for i, _, _ in got)

    def count(self, user_id: str) -> int:
        """How many records the user has."""
        _check_str("user_id", user_id)
        return self._use(user_id, "count", lambda c: int(c.count()), create=False) or 0

    def delete(self, user_id: str, ids: Sequence[str]) -> None:
        """Delete those ``ids`` that are the user's; ids of other users are left alone."""
        owned = list(self.metadata(user_id, ids))
        for start in range(0, len(owned), self._max_batch):
            chunk = owned[start : start + self._max_batch]
            self._use(user_id, "delete", lambda c: c.delete(ids=chunk), create=False)
        self._unregister(owned, user_id)

    def delete_user(self, user_id: str) -> int:
        """Delete every record of the user — their whole collection; returns how many records it held."""
        count = self.count(user_id)  # opens (never creates) and caches the handle if the collection exists
        with self._lock:
            existed = self._open.pop(user_id, None) is not None
        if existed:
            name = self.collection_name(user_id)
            try:
                with chroma_errors(f"delete collection {name}"):
                    self._client.delete_collection(name)
            except StoreError as exc:
                if not _is_not_found(exc.__cause__):  # deleted meanwhile by someone else: done either way
                    raise
        self._unregister(None, user_id)
        return count


def _digest(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_HEX]


def _placeholders(ids: list[str]) -> np.ndarray:
    """``(n, _OWNER_DIM)`` unit vectors spread by the ids' hashes: the directory is only read by id, but
    every Chroma record needs a vector (identical ones would degrade its HNSW graph)."""
    raw = np.array([list(hashlib.sha256(i.encode("utf-8", "surrogatepass")).digest()[:_OWNER_DIM]) for i in ids],
                   dtype=np.float32).reshape(len(ids), _OWNER_DIM) + 1.0
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def _is_not_found(exc: BaseException | None) -> bool:
    from chromadb.errors import NotFoundError

    return isinstance(exc, NotFoundError)


def _existing(client: "ClientAPI", name: str, embedder: Embedder) -> "Collection | None":
    """Collection ``name`` opened with our embedding function, or None if it does not exist (never creates)."""
    register_chroma_embedding_function()
    try:
        with chroma_errors(f"open collection {name!r}"):
            function = ChromaEmbeddingFunction(embedder)
            collection = client.get_collection(name, embedding_function=function)  # type: ignore[arg-type]
            space = (collection.configuration.get("hnsw") or {}).get("space")
    except StoreError as exc:
        if _is_not_found(exc.__cause__):
            return None
        raise
    if space != SPACE:
        raise StoreError(f"collection {name!r} exists with distance space {space!r}, pllm needs {SPACE!r}; "
                         "use another collection prefix or delete that collection")
    return collection


# --------------------------------------------------------------------------------- episodes


class EpisodicStore(_UserScopedCollection):
    """Every turn of every user, with ``user_id``/``session_id``/time and usage statistics in metadata.

    Metadata per episode: ``user_id, session_id, role, at, recorded_at`` (float epoch seconds, plus exact
    ``*_us`` integers), ``importance``, ``recall_count`` (starts at 0) and ``last_recalled`` (epoch seconds,
    starts at ``at``). Re-adding an episode keeps its ``recall_count`` and ``last_recalled``.
    """

    _PROTECTED = frozenset({"user_id", "session_id", "role", "at", "recorded_at"})
    _PRESERVED_ON_READD = ("recall_count", "last_recalled")

    def add(self, episodes: Sequence[Episode], vectors: np.ndarray | None = None) -> None:
        """Upsert ``episodes`` by id (idempotent). ``vectors``: precomputed ``(n, dim)`` rows, or None to embed."""
        episodes = list(episodes)
        for episode in episodes:
            if not isinstance(episode, Episode):
                raise InvalidInput(f"EpisodicStore.add takes Episode records, got {type(episode).__name__}")
        if not episodes:
            return
        self._upsert(
            [e.id for e in episodes], [e.text for e in episodes], [self._to_metadata(e) for e in episodes], vectors
        )

    @staticmethod
    def _to_metadata(episode: Episode) -> dict[str, Any]:
        at = _time_fields("at", episode.at)
        return {
            "user_id": episode.user_id,
            "session_id": episode.session_id,
            "role": episode.role,
            **at,
            **_time_fields("recorded_at", episode.recorded_at),
            "importance": float(episode.importance),
            "recall_count": 0,
            "last_recalled": at["at"],
        }

    @staticmethod
    def _to_episode(record_id: str, text: str, meta: Mapping[str, Any]) -> Episode:
        return Episode(
            user_id=meta["user_id"],
            session_id=meta["session_id"],
            role=meta["role"],
            text=text,
            at=_read_time(meta, "at"),
            recorded_at=_read_time(meta, "recorded_at"),
            id=record_id,
            importance=float(meta["importance"]),
        )

    def query(self, user_id: str, vector: np.ndarray, k: int, *, where: Mapping[str, Any] | None = None) -> list[Hit]:
        """The user's ``k`` episodes nearest to ``vector`` (best first), optionally filtered by ``where``
        (Chroma syntax; datetimes allowed, e.g. ``{"at": {"$gte": t}}``). Unknown user → ``[]``."""
        return self._search(user_id, vector, k, self._scope(user_id, where))

    def get(self, user_id: str, ids: Sequence[str] | None = None, *, limit: int | None = None) -> list[Episode]:
        """The user's episodes (all, or those of ``ids`` that are theirs), sorted by ``at`` ascending.

        ``limit`` keeps the most recent ``limit`` of them (still returned oldest first).
        """
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InvalidInput(f"limit must be a positive int or None, got {limit!r}")
        episodes = sorted(
            (self._to_episode(i, d, m) for i, d, m in self._get(user_id, ids)),
            key=lambda e: (e.at, e.recorded_at, e.id),
        )
        return episodes[-limit:] if limit is not None else episodes

    def update_metadata(self, user_id: str, updates: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge keys into episodes' metadata (e.g. ``recall_count``, ``last_recalled``, ``importance``).

        Every id must be one of the user's episodes and every value a finite scalar, or nothing is written.
        Identity keys (user, session, role, times) cannot be changed.
        """
        for record_id, changes in (updates.items() if isinstance(updates, Mapping) else ()):
            importance = changes.get("importance") if isinstance(changes, Mapping) else None
            if importance is not None and not (isinstance(importance, (int, float)) and 0.0 <= importance <= 1.0):
                raise InvalidInput(f"importance of {record_id!r} must be within [0, 1], got {importance!r}")
        self._merge_metadata(user_id, updates)


# ------------------------------------------------------------------------------- semantic


class SemanticStore(_UserScopedCollection):
    """Facts, preferences and summaries of each user, each pointing back to its source episodes.

    Superseded or retracted facts stay stored with ``current=False`` and are hidden from queries unless
    ``include_superseded=True``.
    """

    _PROTECTED = frozenset({"user_id", "kind", "at", "fact_id", "source_episode_ids"})

    def add(self, items: Sequence[MemoryItem], vectors: np.ndarray | None = None) -> None:
        """Upsert ``items`` by id (idempotent). ``vectors``: precomputed ``(n, dim)`` rows, or None to embed."""
        items = list(items)
        for item in items:
            if not isinstance(item, MemoryItem):
                raise InvalidInput(f"SemanticStore.add takes MemoryItem records, got {type(item).__name__}")
        if not items:
            return
        self._upsert([i.id for i in items], [i.text for i in items], [self._to_metadata(i) for i in items], vectors)

    @staticmethod
    def _to_metadata(item: MemoryItem) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "user_id": item.user_id,
            "kind": item.kind,
            **_time_fields("at", item.at),
            "source_episode_ids": json.dumps(list(item.source_episode_ids)),
            "current": item.current,
        }
        if item.fact_id is not None:  # Chroma metadata cannot hold None
            meta["fact_id"] = item.fact_id
        return meta

    @staticmethod
    def _to_item(record_id: str, text: str, meta: Mapping[str, Any]) -> MemoryItem:
        return MemoryItem(
            id=record_id,
            user_id=meta["user_id"],
            kind=meta["kind"],
            text=text,
            at=_read_time(meta, "at"),
            source_episode_ids=tuple(json.loads(meta.get("source_episode_ids", "[]"))),
            fact_id=meta.get("fact_id"),
            current=bool(meta.get("current", True)),
        )

    def _public_metadata(self, meta: dict[str, Any]) -> dict[str, Any]:
        meta["source_episode_ids"] = tuple(json.loads(meta.get("source_episode_ids", "[]")))
        return meta

    def query(
        self,
        user_id: str,
        vector: np.ndarray,
        k: int,
        *,
        kinds: Sequence[MemoryKind] | None = None,
        include_superseded: bool = False,
        where: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """The user's ``k`` items nearest to ``vector`` (best first), of ``kinds`` (default all), current
        ones only unless ``include_superseded``, optionally filtered by ``where``."""
        conditions: list[Mapping[str, Any] | None] = [where]
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)  # type: ignore[list-item]
            unknown = [k for k in kinds if k not in _KINDS]
            if not kinds or unknown:
                raise InvalidInput(f"kinds must be a non-empty subset of {_KINDS}, got {kinds!r}")
            conditions.append({"kind": {"$in": list(kinds)}})
        if not include_superseded:
            conditions.append({"current": True})
        return self._search(user_id, vector, k, self._scope(user_id, *conditions))

    def get(self, user_id: str, ids: Sequence[str] | None = None) -> list[MemoryItem]:
        """The user's items (all, or those of ``ids`` that are theirs), sorted by ``at`` ascending."""
        items = (self._to_item(i, d, m) for i, d, m in self._get(user_id, ids))
        return sorted(items, key=lambda item: (item.at, item.id))

    def mark_superseded(self, user_id: str, fact_ids: Sequence[str]) -> None:
        """Set ``current=False`` on the user's items whose ``fact_id`` is in ``fact_ids`` (others: no-op)."""
        self._set_current(user_id, fact_ids, False)

    def mark_current(self, user_id: str, fact_ids: Sequence[str]) -> None:
        """Undo :meth:`mark_superseded`: ``current=True`` again on the user's items with those ``fact_ids``."""
        self._set_current(user_id, fact_ids, True)

    def _set_current(self, user_id: str, fact_ids: Sequence[str], current: bool) -> None:
        if isinstance(fact_ids, str):
            raise InvalidInput("fact_ids must be a sequence of fact ids, not one string")
        if not fact_ids:
            return
        found = self._get(user_id, where={"fact_id": {"$in": list(fact_ids)}})
        self._merge_metadata(user_id, {record_id: {"current": current} for record_id, _, _ in found})
