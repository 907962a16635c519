"""``ChromaStore``: LangGraph's ``BaseStore`` on Chroma, so any graph can ``compile(store=ChromaStore(...))``.

Layout — two collections:

* ``{collection}`` holds one record per item: document = the value as JSON; metadata = ``key``, the
  namespace as JSON (``ns``), its depth and one ``ns_{i}`` key per level (Chroma metadata cannot nest, so
  prefix filters become ``ns_0 == a AND ns_1 == b AND depth >= 2``), ISO ``created_at``/``updated_at`` and
  ``n_vec`` (how many vectors the item has). Chroma insists on a vector per record; items get a constant
  placeholder and are never vector-searched.
* ``{collection}_vectors`` holds the embeddings: one record per indexed text of an item (an item indexed
  on ``"tags[*]"`` has one per tag), with ``item_id`` in metadata. An item's score is its best vector's
  cosine similarity (max pooling), as in LangGraph's ``InMemoryStore``.

Semantics follow ``InMemoryStore``: within one ``batch`` all reads see the store as it was before the
batch's writes, and of several puts to one (namespace, key) the last wins. Value filters support equality
(nested mappings and lists compare whole) and ``$eq $ne $gt $gte $lt $lte``; they are evaluated in Python
over the namespace's items, so a search costs O(items under the prefix). Unlike ``InMemoryStore``,
``created_at`` survives updates. Searches without a query list the newest ``updated_at`` first.
TTL is not supported (``supports_ttl = False``; a ttl raises ``NotImplementedError``).

Per-user data: :meth:`ChromaStore.export_namespace`, :meth:`ChromaStore.import_namespace` and
:meth:`ChromaStore.forget_namespace` work on every item under a namespace prefix such as
``("users", user_id)``, so a registry of everything that holds a user's data can export, move and erase
the user's store items with the rest of their memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    get_text_at_path,
    validate_op_namespace,
)

from memory.chroma_backend import chroma_errors, open_collection, paged_get, persistent_client
from memory.clock import Clock, SystemClock
from memory.embeddings import Embedder, MiniLMEmbedder
from memory.errors import InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    from chromadb.api import ClientAPI

__all__ = ["ChromaStore"]

_WHOLE_VALUE = "$"  # LangGraph's path for "embed the whole value as JSON"
_ID_CHUNK = 500  # item ids per "$in" filter


def _item_id(namespace: tuple[str, ...], key: str) -> str:
    """A stable Chroma id for (namespace, key); hashing avoids any escaping rules for keys."""
    return hashlib.sha256(json.dumps([list(namespace), key]).encode()).hexdigest()


def _prefix_where(prefix: Sequence[str], *, wildcards: bool = False) -> dict[str, Any] | None:
    """A Chroma filter for namespaces starting with ``prefix`` (``"*"`` labels skipped if ``wildcards``)."""
    if not prefix:
        return None
    parts: list[dict[str, Any]] = [{"depth": {"$gte": len(prefix)}}]
    parts += [{f"ns_{i}": label} for i, label in enumerate(prefix) if not (wildcards and label == "*")]
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """Prefix/suffix match with ``"*"`` matching any one label (LangGraph's list_namespaces rule)."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        window = namespace[: len(path)]
    elif condition.match_type == "suffix":
        window = namespace[len(namespace) - len(path) :]
    else:
        raise InvalidInput(f"match_type must be 'prefix' or 'suffix', got {condition.match_type!r}")
    return all(p == "*" or p == label for p, label in zip(path, window))


_OPERATORS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: float(a) > float(b),
    "$gte": lambda a, b: float(a) >= float(b),
    "$lt": lambda a, b: float(a) < float(b),
    "$lte": lambda a, b: float(a) <= float(b),
}


def _value_matches(actual: Any, expected: Any) -> bool:
    """Does a stored value satisfy one filter entry? Operators compare numerically; mappings recurse;
    lists must match element by element."""
    if isinstance(expected, Mapping):
        if any(str(k).startswith("$") for k in expected):
            return all(_apply_operator(actual, op, operand) for op, operand in expected.items())
        return isinstance(actual, Mapping) and all(_value_matches(actual.get(k), v) for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, (list, tuple))
            and len(actual) == len(expected)
            and all(_value_matches(a, e) for a, e in zip(actual, expected))
        )
    return actual == expected


def _apply_operator(actual: Any, op: str, operand: Any) -> bool:
    if op not in _OPERATORS:
        raise InvalidInput(f"unsupported filter operator {op!r}; use one of {sorted(_OPERATORS)}")
    if actual is None and op not in ("$eq", "$ne"):
        return False  # a missing field is neither greater nor smaller than anything
    try:
        return bool(_OPERATORS[op](actual, operand))
    except (TypeError, ValueError):
        return False


class ChromaStore(BaseStore):
    """A persistent LangGraph store on Chroma, with semantic search through the injected embedder.

    Give it a Chroma ``client`` (embedded or ``HttpClient``) or a ``path`` for an embedded one.
    ``index_fields``: JSON paths embedded by default on ``put`` (``None``: the whole value as JSON);
    ``put(..., index=False)`` stores without embedding, ``index=[paths]`` embeds those paths instead.
    Thread-safe: batches run one at a time.
    """

    supports_ttl = False

    def __init__(
        self,
        client: "ClientAPI | None" = None,
        *,
        embedder: Embedder | None = None,
        collection: str = "pllm_store",
        path: Path | None = None,
        index_fields: list[str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if (client is None) == (path is None):
            raise InvalidInput("ChromaStore needs exactly one of `client` (a Chroma client) or `path` (a folder)")
        if index_fields is not None and (isinstance(index_fields, str) or not index_fields):
            raise InvalidInput(f"index_fields must be a non-empty list of JSON paths or None, got {index_fields!r}")
        self._client = client if client is not None else persistent_client(Path(path))  # type: ignore[arg-type]
        self._embedder = embedder or MiniLMEmbedder()
        self._fields = list(index_fields or [_WHOLE_VALUE])
        self._clock = clock or SystemClock()
        self._items = open_collection(self._client, collection, self._embedder)
        self._vectors = open_collection(self._client, f"{collection}_vectors", self._embedder)
        # Chroma needs a vector for every record; items are never searched by vector, so one constant
        # unit vector (dim,) stands in for all of them.
        self._placeholder = np.eye(1, self._embedder.dim, dtype=np.float32)[0].tolist()
        self._lock = threading.RLock()

    # --------------------------------------------------------------------------------- batch

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` in order of results; reads see the state before this batch's writes."""
        ops = list(ops)
        for op in ops:
            if not isinstance(op, (GetOp, PutOp, SearchOp, ListNamespacesOp)):
                raise InvalidInput(f"unknown store operation {type(op).__name__}")
            validate_op_namespace(op)
            if isinstance(op, PutOp) and op.ttl is not None:
                raise NotImplementedError("ChromaStore does not support TTL; put with ttl=None")
        with self._lock:
            results = self._read(ops)
            puts = {(op.namespace, op.key): op for op in ops if isinstance(op, PutOp)}  # last put wins
            if puts:
                self._write(list(puts.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` in a worker thread (Chroma's client is synchronous)."""
        return await asyncio.to_thread(self.batch, list(ops))

    # --------------------------------------------------------------------------------- reads

    def _read(self, ops: list[Op]) -> list[Result]:
        gets = [op for op in ops if isinstance(op, GetOp)]
        found = self._fetch_items([_item_id(op.namespace, op.key) for op in gets]) if gets else {}
        searches = [op for op in ops if isinstance(op, SearchOp)]
        queries = sorted({op.query for op in searches if op.query})
        query_vectors = dict(zip(queries, self._embedder.embed(queries))) if queries else {}
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(found.get(_item_id(op.namespace, op.key)))
            elif isinstance(op, SearchOp):
                results.append(self._search(op, query_vectors.get(op.query) if op.query else None))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                results.append(None)
        return results

    def _fetch_items(self, ids: list[str]) -> dict[str, Item]:
        with chroma_errors("read items"):
            got = self._items.get(ids=ids, include=["documents", "metadatas"])
        return {i: self._to_item(d, m) for i, d, m in zip(got["ids"], got["documents"] or [], got["metadatas"] or [])}

    @staticmethod
    def _to_item(document: str | None, meta: Mapping[str, Any] | None) -> Item:
        meta = meta or {}
        return Item(
            value=json.loads(document or "{}"),
            key=str(meta["key"]),
            namespace=tuple(json.loads(str(meta["ns"]))),
            created_at=datetime.fromisoformat(str(meta["created_at"])),
            updated_at=datetime.fromisoformat(str(meta["updated_at"])),
        )

    def _candidates(self, op: SearchOp) -> list[tuple[Item, int]]:
        """(item, number of vectors) under the prefix that pass the filter, newest update first."""
        with chroma_errors("list items"):
            got = self._items.get(where=_prefix_where(op.namespace_prefix), include=["documents", "metadatas"])
        rows = zip(got["documents"] or [], got["metadatas"] or [])
        pairs = [(self._to_item(d, m), int((m or {}).get("n_vec", 0))) for d, m in rows]
        if op.filter:
            wanted = op.filter.items()
            pairs = [(it, n) for it, n in pairs if all(_value_matches(it.value.get(k), v) for k, v in wanted)]
        pairs.sort(key=lambda p: (p[0].namespace, p[0].key))
        pairs.sort(key=lambda p: p[0].updated_at, reverse=True)  # stable: ties stay in namespace/key order
        return pairs

    def _search(self, op: SearchOp, query_vector: np.ndarray | None) -> list[SearchItem]:
        if op.limit < 0 or op.offset < 0:
            raise InvalidInput(f"search limit and offset must be >= 0, got limit={op.limit}, offset={op.offset}")
        candidates = self._candidates(op)
        if query_vector is None:
            ranked: list[tuple[Item, float | None]] = [(it, None) for it, _ in candidates]
        else:
            scores = self._scores(query_vector, {_item_id(it.namespace, it.key): n for it, n in candidates if n})
            scored = [(it, scores[_item_id(it.namespace, it.key)]) for it, n in candidates if n]
            scored.sort(key=lambda p: p[1], reverse=True)
            # items stored with index=False have no vector: they follow the scored ones, unscored
            ranked = [*scored, *((it, None) for it, n in candidates if not n)]
        page = ranked[op.offset : op.offset + op.limit]
        return [
            SearchItem(it.namespace, it.key, it.value, it.created_at, it.updated_at, score=score) for it, score in page
        ]

    def _scores(self, query_vector: np.ndarray, n_vectors: dict[str, int]) -> dict[str, float]:
        """Best cosine similarity per item id (max pooling over the item's vectors)."""
        if not n_vectors:
            return {}
        with chroma_errors("search vectors"):
            got = self._vectors.query(
                query_embeddings=[query_vector.tolist()],
                n_results=sum(n_vectors.values()),
                where={"item_id": {"$in": list(n_vectors)}},
                include=["metadatas", "distances"],
            )
        best: dict[str, float] = {}
        for meta, distance in zip((got["metadatas"] or [[]])[0], (got["distances"] or [[]])[0]):
            item_id = str((meta or {})["item_id"])
            best[item_id] = max(best.get(item_id, -1.0), 1.0 - float(distance))
        return {i: best.get(i, -1.0) for i in n_vectors}

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = tuple(op.match_conditions or ())
        prefix = next((c.path for c in conditions if c.match_type == "prefix"), ())
        with chroma_errors("list namespaces"):
            got = self._items.get(where=_prefix_where(tuple(prefix), wildcards=True), include=["metadatas"])
        namespaces = {tuple(json.loads(str((m or {})["ns"]))) for m in got["metadatas"] or []}
        namespaces = {ns for ns in namespaces if all(_namespace_matches(c, ns) for c in conditions)}
        if op.max_depth is not None:
            namespaces = {ns[: op.max_depth] for ns in namespaces}
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    # -------------------------------------------------------------------------------- writes

    def _write(self, puts: list[PutOp]) -> None:
        """Apply puts and deletes. Values are checked and embedded before anything is written, so bad
        input or a failing embedder writes nothing."""
        deletes = [_item_id(op.namespace, op.key) for op in puts if op.value is None]
        upserts = [op for op in puts if op.value is not None]
        documents = [self._dump(op) for op in upserts]
        texts = [self._texts(op) for op in upserts]  # per put: the texts to embed, [] if not indexed
        flat = [t for ts in texts for t in ts]
        vectors = self._embedder.embed(flat) if flat else np.zeros((0, self._embedder.dim), np.float32)
        if deletes:
            self._delete(deletes)
        if upserts:
            self._upsert(upserts, documents, texts, vectors)

    def _texts(self, op: PutOp) -> list[str]:
        if op.index is False:
            return []
        paths = self._fields if op.index is None else list(op.index)
        return [text for path in paths for text in get_text_at_path(op.value, path)]

    def _delete(self, ids: list[str]) -> None:
        with chroma_errors("delete items"):
            self._vectors.delete(where={"item_id": {"$in": ids}})
            self._items.delete(ids=ids)

    def _upsert(self, puts: list[PutOp], documents: list[str], texts: list[list[str]], vectors: np.ndarray) -> None:
        ids = [_item_id(op.namespace, op.key) for op in puts]
        now = self._clock.now().isoformat()
        with chroma_errors("read items"):
            old = self._items.get(ids=ids, include=["metadatas"])
        created = {i: str((m or {})["created_at"]) for i, m in zip(old["ids"], old["metadatas"] or [])}
        metadatas = []
        for item_id, op, item_texts in zip(ids, puts, texts):
            metadatas.append(
                {
                    "key": op.key,
                    "ns": json.dumps(list(op.namespace)),
                    "depth": len(op.namespace),
                    **{f"ns_{i}": label for i, label in enumerate(op.namespace)},
                    "created_at": created.get(item_id, now),
                    "updated_at": now,
                    "n_vec": len(item_texts),
                }
            )
        with chroma_errors("write items"):
            self._items.upsert(
                ids=ids,
                documents=documents,
                metadatas=metadatas,  # type: ignore[arg-type]
                embeddings=[self._placeholder] * len(ids),  # type: ignore[arg-type]
            )
            self._vectors.delete(where={"item_id": {"$in": ids}})  # an update replaces all its vectors
        self._add_vectors(ids, puts, texts, vectors)

    def _add_vectors(self, ids: list[str], puts: list[PutOp], texts: list[list[str]], vectors: np.ndarray) -> None:
        vector_ids, documents, metadatas = [], [], []
        for item_id, op, item_texts in zip(ids, puts, texts):
            for n, text in enumerate(item_texts):
                vector_ids.append(f"{item_id}:{n}")
                documents.append(text)
                metadatas.append({"item_id": item_id, "ns": json.dumps(list(op.namespace)), "key": op.key})
        if vector_ids:
            with chroma_errors("write vectors"):
                self._vectors.upsert(
                    ids=vector_ids, documents=documents, metadatas=metadatas, embeddings=vectors  # type: ignore[arg-type]
                )

    @staticmethod
    def _dump(op: PutOp) -> str:
        if not isinstance(op.value, Mapping):
            raise InvalidInput(f"a store value must be a mapping (dict), got {type(op.value).__name__}")
        try:
            return json.dumps(dict(op.value or {}), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"the value for key {op.key!r} is not JSON-serializable: {exc}") from exc

    # ------------------------------------------------------------------------- per-namespace data

    def export_namespace(self, prefix: Sequence[str]) -> list[dict[str, Any]]:
        """Every item whose namespace starts with ``prefix``, JSON-ready, in (namespace, key) order:
        ``{"namespace": [...], "key", "value", "created_at", "updated_at", "texts"}`` where ``texts`` are
        the texts the item is searchable by (vectors are not exported; :meth:`import_namespace` embeds
        the texts again)."""
        prefix = _check_prefix(prefix)
        with self._lock:
            with chroma_errors("list items"):
                rows = paged_get(self._items, None, _prefix_where(prefix), ["documents", "metadatas"])
            texts = self._texts_of([i for i, _, _ in rows])
        items = [(self._to_item(d, m), texts.get(i, [])) for i, d, m in rows]
        items.sort(key=lambda p: (p[0].namespace, p[0].key))
        return [{"namespace": list(it.namespace), "key": it.key, "value": it.value,
                 "created_at": it.created_at.isoformat(), "updated_at": it.updated_at.isoformat(), "texts": t}
                for it, t in items]

    def import_namespace(self, items: Sequence[Mapping[str, Any]], *, prefix: Sequence[str] | None = None) -> int:
        """Store :meth:`export_namespace` output (replacing items with the same namespace and key);
        returns how many items were stored.

        ``prefix`` moves the items: it replaces the first ``len(prefix)`` labels of every namespace (export
        ``("users", "ann")`` and import with ``prefix=("users", "bea")`` to give Bea Ann's items). Every
        item is checked and every text embedded before anything is written.
        """
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise InvalidInput(f"items must be a list of export_namespace() records, got {type(items).__name__}")
        new_prefix = _check_prefix(prefix) if prefix is not None else None
        records = [_import_record(n, raw, new_prefix, self._clock.now()) for n, raw in enumerate(items)]
        seen: dict[tuple[tuple[str, ...], str], int] = {}
        for n, (op, *_rest) in enumerate(records):
            first = seen.setdefault((op.namespace, op.key), n)
            if first != n:
                raise InvalidInput(f"items #{first} and #{n} both hold namespace {op.namespace} key {op.key!r}; "
                                   "import each item once")
        flat = [t for _, _, _, texts in records for t in texts]
        vectors = self._embedder.embed(flat) if flat else np.zeros((0, self._embedder.dim), np.float32)
        with self._lock:
            self._store_imported(records, vectors)
        return len(records)

    def _store_imported(self, records: list[tuple[PutOp, str, str, list[str]]], vectors: np.ndarray) -> None:
        puts = [op for op, _, _, _ in records]
        ids = [_item_id(op.namespace, op.key) for op in puts]
        metadatas = [{"key": op.key, "ns": json.dumps(list(op.namespace)), "depth": len(op.namespace),
                      **{f"ns_{i}": label for i, label in enumerate(op.namespace)}, "created_at": created,
                      "updated_at": updated, "n_vec": len(texts)} for op, created, updated, texts in records]
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = slice(start, start + _ID_CHUNK)
            with chroma_errors("write items"):
                self._items.upsert(ids=ids[chunk], documents=[self._dump(op) for op in puts[chunk]],
                                   metadatas=metadatas[chunk],  # type: ignore[arg-type]
                                   embeddings=[self._placeholder] * len(ids[chunk]))  # type: ignore[arg-type]
                self._vectors.delete(where={"item_id": {"$in": ids[chunk]}})  # replaced items lose their old vectors
        self._add_vectors(ids, puts, [texts for _, _, _, texts in records], vectors)

    def forget_namespace(self, prefix: Sequence[str]) -> int:
        """Delete every item whose namespace starts with ``prefix``, with its vectors; returns how many
        items were deleted (0 if none)."""
        prefix = _check_prefix(prefix)
        with self._lock:
            with chroma_errors("list items"):
                ids = [i for i, _, _ in paged_get(self._items, None, _prefix_where(prefix), [])]
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                with chroma_errors("delete items"):
                    self._vectors.delete(where={"item_id": {"$in": chunk}})
                    self._items.delete(ids=chunk)
        return len(ids)

    def _texts_of(self, ids: list[str]) -> dict[str, list[str]]:
        """item id → the texts of its vectors, in the order they were indexed."""
        found: dict[str, list[tuple[int, str]]] = {}
        for start in range(0, len(ids), _ID_CHUNK):
            where = {"item_id": {"$in": ids[start : start + _ID_CHUNK]}}
            with chroma_errors("read vectors"):
                rows = paged_get(self._vectors, None, where, ["documents", "metadatas"])
            for vector_id, document, meta in rows:
                found.setdefault(str((meta or {})["item_id"]), []).append((int(vector_id.rsplit(":", 1)[1]), document or ""))
        return {i: [text for _, text in sorted(pairs)] for i, pairs in found.items()}


def _check_prefix(prefix: Any, *, what: str = "prefix") -> tuple[str, ...]:
    """A non-empty namespace prefix of LangGraph-valid labels (an empty one would mean every user's data)."""
    if isinstance(prefix, str) or not isinstance(prefix, Sequence) or not prefix:
        raise InvalidInput(f"{what} must be a non-empty tuple of namespace labels such as ('users', 'ann'), got {prefix!r}")
    prefix = tuple(prefix)
    try:
        validate_op_namespace(GetOp(prefix, "_"))
    except Exception as exc:  # noqa: BLE001 - LangGraph's InvalidNamespaceError, reworded as ours
        raise InvalidInput(f"{what} {prefix!r} is not a valid namespace: {exc}") from exc
    return prefix


def _import_record(n: int, raw: Any, prefix: tuple[str, ...] | None, now: datetime) -> tuple[PutOp, str, str, list[str]]:
    """One export record checked → (its put, created_at, updated_at, its texts)."""
    where = f"item #{n}"
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where} must be a mapping from export_namespace(), got {type(raw).__name__}")
    namespace, key, value, texts = raw.get("namespace"), raw.get("key"), raw.get("value"), raw.get("texts", [])
    if isinstance(namespace, str) or not isinstance(namespace, Sequence) or not namespace:
        raise InvalidInput(f"{where}: namespace must be a non-empty list of labels, got {namespace!r}")
    if prefix is not None:
        if len(namespace) < len(prefix):
            raise InvalidInput(f"{where}: namespace {list(namespace)} is shorter than the new prefix {list(prefix)}")
        namespace = [*prefix, *namespace[len(prefix):]]
    namespace = _check_prefix(namespace, what=f"{where}: namespace")
    if namespace[0] == "langgraph":
        raise InvalidInput(f"{where}: the root label 'langgraph' is reserved by LangGraph")
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"{where}: key must be a non-empty string, got {key!r}")
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where}: value must be a mapping (dict), got {type(value).__name__}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise InvalidInput(f"{where}: texts must be a list of strings, got {texts!r}")
    times = []
    for name in ("created_at", "updated_at"):
        stamp = raw.get(name, now.isoformat())
        try:
            times.append(datetime.fromisoformat(stamp).isoformat())
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}: {name} must be an ISO-8601 time, got {stamp!r}") from None
    op = PutOp(namespace, key, dict(value))
    try:  # JSON-serializable and storable as UTF-8
        "".join([ChromaStore._dump(op), key, *namespace, *texts]).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{where}: it holds text that is not valid Unicode ({exc.reason})") from None
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    return op, times[0], times[1], list(texts)
