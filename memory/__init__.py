"""pllm memory: episodic + semantic memory in Chroma, a bi-temporal per-user knowledge graph, retrieval.

Importing this package does no I/O; stores open when constructed.
"""

from memory.clock import Clock, ManualClock, SystemClock, to_utc, utc
from memory.config import MemoryConfig
from memory.embeddings import ChromaEmbeddingFunction, Embedder, LangChainEmbeddings, MiniLMEmbedder
from memory.errors import EmbedderUnavailable, InvalidInput, PllmMemoryError, StoreError, UnknownUser
from memory.records import (
    ChangeEvent,
    Episode,
    Fact,
    FactAdded,
    FactRetracted,
    FactSuperseded,
    PreferenceDrift,
    StyleDrift,
)

__all__ = [
    "ChangeEvent",
    "ChromaEmbeddingFunction",
    "Clock",
    "Embedder",
    "EmbedderUnavailable",
    "Episode",
    "Fact",
    "FactAdded",
    "FactRetracted",
    "FactSuperseded",
    "InvalidInput",
    "LangChainEmbeddings",
    "ManualClock",
    "MemoryConfig",
    "MiniLMEmbedder",
    "PllmMemoryError",
    "PreferenceDrift",
    "StoreError",
    "StyleDrift",
    "SystemClock",
    "UnknownUser",
    "to_utc",
    "utc",
]
