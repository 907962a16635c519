"""Consolidation and forgetting: session summaries and a per-user cap on indexed episodes.

* **Summaries** — a session whose last turn is older than ``older_than_days`` gets one extractive
  summary item in the semantic store (its date, what the user said first, the facts learnt in it), so
  old sessions stay findable as a whole after their turns fade.
* **Cap** — when a user has more than ``MemoryConfig.max_episodes_per_user`` episodes in the search
  index, the weakest are evicted down to 90 % of the cap (amortized: not on every turn). Strength =
  importance × retention, where retention decays with time since the last recall and decays more
  slowly the more often the episode was recalled (:mod:`memory.forgetting`). Evicted sessions are
  summarized first. Facts are never evicted: they live in the graph. An evicted episode's SQLite row
  is kept only while a fact cites it as evidence.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from memory.forgetting import retention, stability_days, strength
from memory.records import Episode

if TYPE_CHECKING:  # pragma: no cover
    from memory.service import Memory
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


def summarize_session(mem: "Memory", user_id: str, session_id: str, episodes: list[Episode]) -> "MemoryItem":
    """An extractive summary of one session (no model needed, deterministic)."""
    from memory.stores import MemoryItem

    said = [e.text.strip().replace("\n", " ") for e in episodes if e.role == "user"][:SUMMARY_TURNS]
    said = [s if len(s) <= SUMMARY_CHARS else s[: SUMMARY_CHARS - 1] + "…" for s in said]
    ids = {e.id for e in episodes}
    learnt = [f.text() for f in mem.graph.facts(user_id, include_superseded=True) if ids & set(f.source_episode_ids)]
    day = min(e.at for e in episodes).date().isoformat()
    parts = [f"Session of {day}."]
    if said:
        parts.append("The user said: " + " / ".join(said))
    if learnt:
        parts.append("Learnt: " + "; ".join(learnt[:8]))
    return MemoryItem(id=summary_id(user_id, session_id), user_id=user_id, kind="summary", text=" ".join(parts),
                      at=max(e.at for e in episodes), source_episode_ids=tuple(e.id for e in episodes))


def _summarize(mem: "Memory", user_id: str, sessions: dict[str, list[Episode]]) -> int:
    existing = {i.id for i in mem.semantic.get(user_id, [summary_id(user_id, s) for s in sessions])} if sessions else set()
    items = [summarize_session(mem, user_id, s, eps) for s, eps in sessions.items()
             if summary_id(user_id, s) not in existing]
    if items:
        mem.semantic.add(items, mem.embedder.embed([i.text for i in items]))
        mem.retriever.index_summaries(items)
    return len(items)


def consolidate(mem: "Memory", user_id: str, *, older_than_days: float = 7.0) -> ConsolidationReport:
    """Summarize sessions older than ``older_than_days`` and apply the cap."""
    cutoff = mem.clock.now() - timedelta(days=older_than_days)
    sessions: dict[str, list[Episode]] = defaultdict(list)
    for e in mem.episodes(user_id):
        sessions[e.session_id].append(e)
    old = {s: eps for s, eps in sessions.items() if max(e.at for e in eps) < cutoff}
    added = _summarize(mem, user_id, old)
    return ConsolidationReport(summaries_added=added, evicted=enforce_cap(mem, user_id))


def enforce_cap(mem: "Memory", user_id: str) -> int:
    """Evict the weakest indexed episodes when the user is over the cap; returns how many."""
    cap = mem.config.max_episodes_per_user
    count = mem.indexed_count(user_id)
    if count <= cap:
        return 0
    n_evict = count - int(cap * EVICT_TO)
    ids = mem.episodic.ids(user_id)
    meta = mem.episodic.metadata(user_id, ids)
    now = mem.clock.now()
    scored = sorted(ids, key=lambda i: _strength(meta[i], now, mem.config.half_life_days))
    victims = scored[:n_evict]
    episodes = mem._episodes_by_id(user_id, victims)
    by_session: dict[str, list[Episode]] = defaultdict(list)
    for e in episodes:
        by_session[e.session_id].append(e)
    _summarize(mem, user_id, by_session)
    cited = {i for f in mem.graph.facts(user_id, include_superseded=True) for i in f.source_episode_ids}
    with mem._write_lock:
        mem.episodic.delete(user_id, victims)
        marks = ",".join("?" * len(victims))
        mem._db.execute(f"UPDATE episodes SET in_index = 0 WHERE user_id = ? AND id IN ({marks})", [user_id, *victims])
        drop = [v for v in victims if v not in cited]
        if drop:
            mark2 = ",".join("?" * len(drop))
            mem._db.execute(f"DELETE FROM episodes WHERE user_id = ? AND id IN ({mark2})", [user_id, *drop])
    mem.retriever.remove(user_id, victims)
    log.info("evicted %d of %d episodes of %s (cap %d)", len(victims), count, user_id, cap)
    return len(victims)


def _strength(meta: dict, now: datetime, half_life_days: float) -> float:
    last = datetime.fromtimestamp(float(meta.get("last_recalled", meta.get("at", 0.0))), tz=timezone.utc)
    s = stability_days(half_life_days, int(meta.get("recall_count", 0)))
    return strength(float(meta.get("importance", 0.5)), retention(now, min(last, now), s))
