"""What a read-only ``Memory`` searches instead of an embedded Chroma: views over the SQLite record of truth.

Embedded Chroma is not safe to open from a second process while another one writes: its local executor
writes on *reads* too (on a collection's first use it applies the write-ahead log to the metadata segment
and to its in-memory HNSW index, purges the log, and may persist the index; chromadb 1.5.9,
``rust/frontend/src/executor/local.rs``), and a reader's in-memory index goes stale — a filtered query
then fails with "Error finding id" (seen here). So a read-only ``Memory`` of an embedded home never opens
Chroma: these two views answer the store calls the retriever makes from ``memory.sqlite``, without the
dense channel (``query`` finds nothing), so its recall is lexical (BM25 with dialogue context) plus the
knowledge graph. With a Chroma server (``chroma_url``) a read-only ``Memory`` reads the real stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from memory.episodes import EpisodeLog
from memory.errors import ReadOnlyMemory
from memory.records import Episode
from memory.summaries import SummaryLog

if TYPE_CHECKING:  # pragma: no cover
    from memory.stores import Hit, MemoryItem

__all__ = ["EpisodeView", "SummaryView"]

_WHY = ("this Memory is read-only and reads memory.sqlite, not the embedded Chroma that the writing process owns; "
        "write through that process")


class EpisodeView:
    """The search index's episodes (``in_index`` rows) as ``EpisodicStore`` reads return them."""

    def __init__(self, log: EpisodeLog) -> None:
        self._log = log

    def get(self, user_id: str, ids: Sequence[str] | None = None, *, limit: int | None = None) -> list[Episode]:
        indexed = self._log.indexed_ids(user_id)
        found = self._log.of_user(user_id) if ids is None else self._log.get(user_id, ids)
        episodes = sorted((e for e in found if e.id in indexed), key=lambda e: (e.at, e.recorded_at, e.id))
        return episodes[-limit:] if limit is not None else episodes

    def ids(self, user_id: str) -> list[str]:
        return sorted(self._log.indexed_ids(user_id))

    def count(self, user_id: str) -> int:
        return self._log.indexed_count(user_id)

    def metadata(self, user_id: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """As stored in Chroma at the turn's write; the writer's recall statistics are not in SQLite."""
        from memory.stores import EpisodicStore

        return {e.id: EpisodicStore._to_metadata(e) for e in self.get(user_id, ids)}

    def query(self, user_id: str, vector: Any, k: int, *, where: Mapping[str, Any] | None = None) -> list["Hit"]:
        return []  # no vectors here: the dense channel is off

    def update_metadata(self, user_id: str, updates: Mapping[str, Mapping[str, Any]]) -> None:
        raise ReadOnlyMemory(f"cannot update episode metadata: {_WHY}")


class SummaryView:
    """Session summaries as ``SemanticStore`` reads return them (facts are the graph's, not searched here)."""

    def __init__(self, summaries: SummaryLog) -> None:
        self._summaries = summaries

    def get(self, user_id: str, ids: Sequence[str] | None = None) -> list["MemoryItem"]:
        return self._summaries.of_user(user_id, ids)

    def ids(self, user_id: str) -> list[str]:
        return sorted(i.id for i in self.get(user_id))

    def count(self, user_id: str) -> int:
        return len(self.get(user_id))

    def query(self, user_id: str, vector: Any, k: int, **filters: Any) -> list["Hit"]:
        return []  # no vectors here: the dense channel is off
