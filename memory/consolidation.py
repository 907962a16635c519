"""Consolidation and forgetting: session summaries and a per-user cap on indexed episodes.

* **Summaries** — a session whose last turn is older than ``older_than_days`` gets one extractive
  summary item in the semantic store (its date, what the user said first, the facts learnt in it), so
  old sessions stay findable as a whole after their turns fade.
* **Cap** — when a user has more than ``MemoryConfig.max_episodes_per_user`` episodes in the search
  index, the weakest are evicted down to 90 % of the cap (amortized: not on every turn). Strength =
  importance × retention, where retention decays with time since the last recall and decays more
  slowly the more often the episode was recalled (:mod:`memory.forgetting`). Evicted sessions are
  summarized first. Facts are never evicted: they live in the graph. An evicted episode's SQLite row
  is kept only while a fact cites it as evidence or the user rated it (a rated reply is training data).

Both work on a ``Memory``'s :class:`~memory.parts.MemoryParts` (never on the facade), and stamp the user's
write version (:class:`~memory.db.UserVersions`) so that other processes' caches notice.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from memory.forgetting import retention, stability_days, strength
from memory.parts import MemoryParts
from memory.records import Episode

if TYPE_CHECKING:  # pragma: no cover
    from memory.graph import KnowledgeGraph
    from memory.stores import MemoryItem

__all__ = ["ConsolidationReport", "consolidate", "enforce_cap", "summarize_session"]

log = logging.getLogger(__name__)

EVICT_TO = 0.9  # evict down to this share of the cap, so eviction runs once per ~10 % of new turns
SUMMARY_TURNS = 4
SUMMARY_CHARS = 160


@dataclass(frozen=True)
class ConsolidationReport:
    summaries_added: int
    evicted: int


def summary_id(user_id: str, session_id: str) -> str:
    """A stable id for a session's summary that does not spell out the user or session id.

    Record ids outlive a deletion in Chroma's write-ahead log, so they must not name the user; a
    hash also keeps ("a_b", "c") and ("a", "b_c") apart.
    """
    digest = hashlib.sha256(f"{user_id}\x00{session_id}".encode()).hexdigest()[:32]
    return f"sum_{digest}"


def summarize_session(graph: "KnowledgeGraph", user_id: str, session_id: str, episodes: list[Episode]) -> "MemoryItem":
    """An extractive summary of one session (no model needed, deterministic)."""
    from memory.stores import MemoryItem

    said = [e.text.strip().replace("\n", " ") for e in episodes if e.role == "user"][:SUMMARY_TURNS]
    said = [s if len(s) <= SUMMARY_CHARS else s[: SUMMARY_CHARS - 1] + "…" for s in said]
    ids = {e.id for e in episodes}
    learnt = [f.text() for f in graph.facts(user_id, include_superseded=True) if ids & set(f.source_episode_ids)]
    day = min(e.at for e in episodes).date().isoformat()
    parts = [f"Session of {day}."]
    if said:
        parts.append("The user said: " + " / ".join(said))
    if learnt:
        parts.append("Learnt: " + "; ".join(learnt[:8]))
    return MemoryItem(id=summary_id(user_id, session_id), user_id=user_id, kind="summary", text=" ".join(parts),
                      at=max(e.at for e in episodes), source_episode_ids=tuple(e.id for e in episodes))


def _summarize(parts: MemoryParts, user_id: str, sessions: dict[str, list[Episode]]) -> int:
    existing = {i.id for i in parts.summaries.of_user(user_id, [summary_id(user_id, s) for s in sessions])}
    items = [summarize_session(parts.graph, user_id, s, eps) for s, eps in sessions.items()
             if summary_id(user_id, s) not in existing]
    if items:
        vectors = parts.embedder.embed([i.text for i in items])  # (n, dim), before the write lock is taken
        with parts.write_lock, parts.sql.transaction("record new session summaries") as conn:
            parts.summaries.put(conn, items)
            version = parts.versions.bump(conn, user_id)
            parts.semantic.add(items, vectors)  # last: a Chroma failure rolls the SQLite side back
        parts.retriever.advance(user_id, *version)
        parts.retriever.index_summaries(items)
    return len(items)


def consolidate(parts: MemoryParts, user_id: str, *, older_than_days: float = 7.0) -> ConsolidationReport:
    """Summarize sessions older than ``older_than_days`` and apply the cap."""
    cutoff = parts.clock.now() - timedelta(days=older_than_days)
    sessions: dict[str, list[Episode]] = defaultdict(list)
    for e in parts.episodes.of_user(user_id):
        sessions[e.session_id].append(e)
    old = {s: eps for s, eps in sessions.items() if max(e.at for e in eps) < cutoff}
    added = _summarize(parts, user_id, old)
    return ConsolidationReport(summaries_added=added, evicted=enforce_cap(parts, user_id))


def enforce_cap(parts: MemoryParts, user_id: str) -> int:
    """Evict the weakest indexed episodes when the user is over the cap; returns how many."""
    cap = parts.config.max_episodes_per_user
    count = parts.episodes.indexed_count(user_id)
    if count <= cap:
        return 0
    n_evict = count - int(cap * EVICT_TO)
    ids = parts.episodic.ids(user_id)
    meta = parts.episodic.metadata(user_id, ids)
    now = parts.clock.now()
    scored = sorted(ids, key=lambda i: _strength(meta[i], now, parts.config.half_life_days))
    victims = scored[:n_evict]
    by_session: dict[str, list[Episode]] = defaultdict(list)
    for e in parts.episodes.get(user_id, victims):
        by_session[e.session_id].append(e)
    _summarize(parts, user_id, by_session)
    cited = {i for f in parts.graph.facts(user_id, include_superseded=True) for i in f.source_episode_ids}
    cited |= parts.feedback.rated_episode_ids(user_id)  # a rated reply stays training data
    with parts.write_lock, parts.sql.transaction("evict episodes from the search index") as conn:
        parts.episodes.evict(conn, user_id, victims, keep=cited)
        version = parts.versions.bump(conn, user_id)
        parts.episodic.delete(user_id, victims)  # last: a Chroma failure rolls the SQLite side back
    parts.retriever.advance(user_id, *version)
    parts.retriever.remove(user_id, victims)
    log.info("evicted %d of %d episodes of %s (cap %d)", len(victims), count, user_id, cap)
    return len(victims)


def _strength(meta: dict, now: datetime, half_life_days: float) -> float:
    last = datetime.fromtimestamp(float(meta.get("last_recalled", meta.get("at", 0.0))), tz=timezone.utc)
    s = stability_days(half_life_days, int(meta.get("recall_count", 0)))
    return strength(float(meta.get("importance", 0.5)), retention(now, min(last, now), s))
