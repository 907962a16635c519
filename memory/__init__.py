"""pllm memory: episodic + semantic memory in Chroma, a bi-temporal per-user knowledge graph, retrieval.

Importing this package does no I/O; stores open when constructed. The names below the records
(``Memory``, the stores, the graph, extraction, retrieval, drift) are resolved lazily on first access:
some of the libraries behind them (chromadb, langgraph, langchain-core) probe the network stack or are
slow to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory.lazy import lazy_exports

from memory.clock import Clock, ManualClock, SystemClock, to_utc, utc
from memory.config import MemoryConfig
from memory.embeddings import ChromaEmbeddingFunction, Embedder, LangChainEmbeddings, MiniLMEmbedder
from memory.errors import (
    EmbedderUnavailable,
    HomeInUse,
    InvalidInput,
    PllmMemoryError,
    ReadOnlyMemory,
    StoreError,
    UnknownUser,
)
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

if TYPE_CHECKING:  # pragma: no cover
    from memory.drift import DriftMonitor
    from memory.extraction import Candidate, Extractor, LLMExtractor, PatternExtractor, SpeechExtractor
    from memory.feedback import Feedback
    from memory.graph import GraphEvent, HistoryEntry, KnowledgeGraph
    from memory.langgraph_store import ChromaStore
    from memory.relations import DIMENSIONS, RELATIONS
    from memory.retrieval import HybridRetriever, Recollection, ScoredEpisode, ScoredFact, ScoredSummary
    from memory.service import Memory, Rated, Remembered
    from memory.stores import EpisodicStore, MemoryItem, SemanticStore

_LAZY = {
    "Memory": "memory.service",
    "Remembered": "memory.service",
    "Rated": "memory.service",
    "KnowledgeGraph": "memory.graph",
    "GraphEvent": "memory.graph",
    "HistoryEntry": "memory.graph",
    "PatternExtractor": "memory.extraction",
    "SpeechExtractor": "memory.extraction",
    "LLMExtractor": "memory.extraction",
    "Candidate": "memory.extraction",
    "Extractor": "memory.extraction",
    "DriftMonitor": "memory.drift",
    "RELATIONS": "memory.relations",
    "DIMENSIONS": "memory.relations",
    "Recollection": "memory.retrieval",
    "ScoredEpisode": "memory.retrieval",
    "ScoredFact": "memory.retrieval",
    "ScoredSummary": "memory.retrieval",
    "HybridRetriever": "memory.retrieval",
    "EpisodicStore": "memory.stores",
    "SemanticStore": "memory.stores",
    "MemoryItem": "memory.stores",
    "ChromaStore": "memory.langgraph_store",
    "Feedback": "memory.feedback",
}

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
    "HomeInUse",
    "InvalidInput",
    "LangChainEmbeddings",
    "ManualClock",
    "MemoryConfig",
    "MiniLMEmbedder",
    "PllmMemoryError",
    "PreferenceDrift",
    "ReadOnlyMemory",
    "StoreError",
    "StyleDrift",
    "SystemClock",
    "UnknownUser",
    "to_utc",
    "utc",
]
__all__ += sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
