"""The parts one ``Memory`` composes, handed as one value to the modules that work on several of them.

Consolidation and portability need the stores, the graph, the episode table and the retriever, but not
the facade: they take :class:`MemoryParts` and never import :mod:`memory.service` (which imports them).
Also here: how a graph fact becomes its semantic-store item (the turn, the import and crash recovery
all index facts the same way).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memory.clock import Clock
from memory.config import MemoryConfig
from memory.db import SqliteDb, UserVersions
from memory.embeddings import Embedder
from memory.episodes import EpisodeLog
from memory.feedback import FeedbackLog
from memory.records import ChangeEvent, Fact, FactAdded, FactRetracted, FactSuperseded
from memory.summaries import SummaryLog

if TYPE_CHECKING:  # pragma: no cover
    from memory.graph import KnowledgeGraph
    from memory.retrieval import HybridRetriever
    from memory.stores import EpisodicStore, MemoryItem, SemanticStore

__all__ = ["MemoryParts", "fact_item", "item_id_for", "semantic_changes"]


@dataclass(frozen=True)
class MemoryParts:
    """Everything a ``Memory`` is made of. ``write_lock`` serializes this process's writes to one home
    (SQLite serializes processes); ``sql`` is the connection that writes ``memory.sqlite`` (in its
    transactions); the tables' owners read through a connection of their own (committed data only)."""

    config: MemoryConfig
    clock: Clock
    embedder: Embedder
    sql: SqliteDb
    episodes: EpisodeLog
    summaries: SummaryLog
    feedback: FeedbackLog
    versions: UserVersions
    episodic: "EpisodicStore"
    semantic: "SemanticStore"
    graph: "KnowledgeGraph"
    retriever: "HybridRetriever"
    write_lock: threading.RLock


def item_id_for(fact_id: str) -> str:
    """The semantic-store id of the item that indexes a graph fact."""
    return f"mi_{fact_id}"


def fact_item(fact: Fact) -> "MemoryItem":
    """The semantic-store item of a graph fact (its sentence, evidence and currency)."""
    from memory.stores import MemoryItem

    return MemoryItem(id=item_id_for(fact.id), user_id=fact.user_id, kind=fact.kind, text=fact.text(),
                      at=fact.valid_from, source_episode_ids=fact.source_episode_ids, fact_id=fact.id,
                      current=fact.current)


def semantic_changes(events: Sequence[ChangeEvent]) -> tuple[list["MemoryItem"], list[str]]:
    """New semantic items and the fact ids whose items are no longer current, for a turn's events."""
    items: list[MemoryItem] = []
    superseded: list[str] = []
    for ev in events:
        if isinstance(ev, FactAdded):
            items.append(fact_item(ev.fact))
        elif isinstance(ev, FactSuperseded):
            items.append(fact_item(ev.new))
            superseded.append(ev.old.id)
        elif isinstance(ev, FactRetracted):
            superseded.append(ev.fact.id)
    return items, superseded
