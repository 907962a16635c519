"""Chroma clients and collections, opened the one way pllm allows.

Invariants every function here keeps:

* telemetry is off (``Settings(anonymized_telemetry=False)``) on every client we build;
* every collection is opened with *our* embedding function (:class:`ChromaEmbeddingFunction`, registered
  with Chroma first) and the cosine space, so Chroma's default ONNX embedder — which downloads a model —
  can never be reached, and a process that reopens a persisted collection finds the function by name;
* Chroma's own exceptions leave this layer as :class:`StoreError`.

``chromadb`` is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlsplit

from memory.config import MemoryConfig
from memory.embeddings import ChromaEmbeddingFunction, Embedder, register_chroma_embedding_function
from memory.errors import InvalidInput, PllmMemoryError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = [
    "GET_PAGE",
    "SPACE",
    "chroma_errors",
    "collection_name",
    "make_chroma_client",
    "open_collection",
    "paged_get",
    "persistent_client",
]

log = logging.getLogger(__name__)

SPACE = "cosine"  # similarity = 1 - distance; every pllm collection uses it
GET_PAGE = 10_000  # records per collection.get call (see paged_get)

# Chroma's rule: 3-512 chars of [a-zA-Z0-9._-], starting and ending with an alphanumeric, no "..".
# fullmatch: ``$`` would also match before a final newline.
_NAME_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9._-]{1,510})[a-zA-Z0-9]")


@contextlib.contextmanager
def chroma_errors(action: str) -> Iterator[None]:
    """Turn any Chroma/transport failure inside the block into :class:`StoreError` naming ``action``.

    Our own errors (already a :class:`PllmMemoryError`) pass through unchanged.
    """
    try:
        yield
    except PllmMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the storage boundary: everything else is Chroma's
        raise StoreError(f"Chroma failed to {action}: {type(exc).__name__}: {exc}") from exc


def _settings(allow_reset: bool) -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=allow_reset)


def _parse_url(url: str) -> tuple[str, int, bool]:
    """``http(s)://host[:port]`` → (host, port, ssl). A path, query or credentials are refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"chroma_url must look like http://HOST:PORT, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise InvalidInput(f"chroma_url must be just scheme, host and port (no path, query or user), got {url!r}")
    ssl = parts.scheme == "https"
    try:
        port = parts.port or (443 if ssl else 8000)  # 8000: the port `chroma run` uses by default
    except ValueError as exc:
        raise InvalidInput(f"chroma_url has an invalid port: {url!r}") from exc
    return parts.hostname, port, ssl


def make_chroma_client(config: MemoryConfig, *, allow_reset: bool = False) -> "ClientAPI":
    """A Chroma client for ``config``: ``HttpClient`` when ``config.chroma_url`` is set, else an
    embedded ``PersistentClient`` under ``config.chroma_path`` (created if missing).

    Raises :class:`StoreError` if the server does not answer or the folder cannot be opened.
    """
    if config.chroma_url:
        import chromadb

        host, port, ssl = _parse_url(config.chroma_url)
        with chroma_errors(f"connect to the Chroma server at {config.chroma_url} (is `chroma run` up?)"):
            return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_settings(allow_reset))
    return persistent_client(config.chroma_path, allow_reset=allow_reset)


def persistent_client(path: Path, *, allow_reset: bool = False) -> "ClientAPI":
    """An embedded ``PersistentClient`` on folder ``path`` (created if missing), telemetry off."""
    import chromadb

    path = Path(path).expanduser()
    with chroma_errors(f"open the embedded Chroma store at {path}"):
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=_settings(allow_reset))


def collection_name(config: MemoryConfig, base: str) -> str:
    """``"{prefix}_{base}"``, checked against Chroma's naming rules (3-512 chars, [a-zA-Z0-9._-],
    alphanumeric at both ends, no "..", not an IPv4 address)."""
    name = f"{config.collection_prefix}_{base}"
    _check_name(name)
    return name


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidInput(
            f"{name!r} is not a valid Chroma collection name: use 3-512 characters of letters, digits, "
            "'.', '_' or '-', starting and ending with a letter or digit, without '..'"
        )
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return
    raise InvalidInput(f"{name!r} is not a valid Chroma collection name: it looks like an IPv4 address")


def open_collection(client: "ClientAPI", name: str, embedder: Embedder) -> "Collection":
    """Get or create collection ``name`` with our embedding function over ``embedder``, cosine space.

    Refuses (``StoreError``) a pre-existing collection in another space or with another embedding
    function: its distances or vectors would not mean what our callers assume.
    """
    _check_name(name)
    register_chroma_embedding_function()
    function = ChromaEmbeddingFunction(embedder)
    with chroma_errors(f"open collection {name!r}"):
        collection = client.get_or_create_collection(
            name,
            embedding_function=function,  # type: ignore[arg-type] - Chroma's protocol, structurally
            configuration={"hnsw": {"space": SPACE}},
        )
        space = (collection.configuration.get("hnsw") or {}).get("space")
    if space != SPACE:
        raise StoreError(
            f"collection {name!r} exists with distance space {space!r}, pllm needs {SPACE!r}; "
            "use another collection prefix or delete that collection"
        )
    log.debug("opened Chroma collection %s", name)
    return collection


def paged_get(collection: "Collection", ids: list[str] | None, where: dict[str, Any] | None,
              include: list[str]) -> list[tuple[str, Any, Any]]:
    """``collection.get`` in pages: Chroma 1.5.9 fails with "too many SQL variables" when one call would
    return more than ~32k records (a user with 50k episodes could not be read at all)."""
    out: list[tuple[str, Any, Any]] = []
    page = GET_PAGE
    for start in range(0, len(ids), page) if ids is not None else iter(int, 1):  # ids: chunks; else until short
        got = collection.get(
            ids=ids[start : start + page] if ids is not None else None, where=where,
            limit=None if ids is not None else page, offset=None if ids is not None else len(out),
            include=include,  # type: ignore[arg-type]
        )
        n = len(got["ids"])
        docs = got.get("documents") or [None] * n
        metas = got.get("metadatas") or [None] * n
        out.extend(zip(got["ids"], docs, metas))
        if ids is None and n < page:
            break
    return out
