"""Hybrid retrieval: dense (Chroma) + lexical (BM25 with dialogue context) + knowledge graph, fused.

One :meth:`HybridRetriever.retrieve` call, in the order data flows:

1. embed the query once;
2. **dense**: nearest episodes (episodic store) and facts/preferences (semantic store);
3. **bm25**: lexical hits over episodes, each indexed *with its neighbouring turns of the same session*
   (a reply like "Yes, it was amazing!" is found by the question it answers), and over the user's facts;
4. **graph**: entities named in the query (capitalized words and graph node names) → their 1-hop
   neighbourhood in the user's knowledge graph → those facts, and the episodes that are their evidence;
5. reciprocal-rank fusion (:func:`rrf`) per item type, normalized to ``[0, 1]``;
6. final episode score = ``relevance·fused + recency·retention + importance·importance``, where retention
   is the Ebbinghaus curve of :mod:`memory.forgetting` (stability grows with each recall);
7. superseded facts are left out unless ``include_superseded``; ``as_of`` restricts everything to what
   was known and true then.

Invariants: every store call is scoped to one ``user_id`` (no channel can surface another user's data);
``retrieve`` writes nothing — bumping recall statistics is :meth:`HybridRetriever.mark_recalled`, which the
caller invokes for the episodes it actually used.

The lexical index is an in-process cache of the episodic store: a user's episodes are loaded on first
use (:meth:`HybridRetriever.ensure_loaded`), new ones must be passed to :meth:`HybridRetriever.index`.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from memory.bm25 import BM25Index, lucene_scores, tokenize
from memory.clock import Clock, to_utc
from memory.config import MemoryConfig
from memory.embeddings import Embedder
from memory.errors import InvalidInput
from memory.forgetting import retention, stability_days
from memory.records import Episode, Fact

if TYPE_CHECKING:  # pragma: no cover
    from memory.graph import KnowledgeGraph
    from memory.stores import EpisodicStore, Hit, SemanticStore

__all__ = [
    "BM25Index",
    "HybridRetriever",
    "Recollection",
    "RetrievalWeights",
    "ScoredEpisode",
    "ScoredFact",
    "rrf",
]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Relations shown first in a profile after preferences: who the user is.
_IDENTITY = ("name", "age", "lives_in", "from", "works_as", "works_at", "studies", "partner", "allergic_to")
# Capitalized words that start questions and sentences, never entities.
_NOT_ENTITIES = frozenset(
    "what when where who whom whose which why how did does do is are was were can could would should will "
    "has have had the a an i my me you your tell please list name give any".split()
)


# ------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ScoredEpisode:
    """A recalled turn. ``sources`` ⊆ {"dense", "bm25", "graph"}: the channels that found it."""

    episode_id: str
    text: str
    at: datetime
    session_id: str
    role: str
    score: float
    sources: tuple[str, ...]


@dataclass(frozen=True)
class ScoredFact:
    """A recalled knowledge-graph fact with its fused score."""

    fact: Fact
    score: float


@dataclass(frozen=True)
class Recollection:
    """What :meth:`HybridRetriever.retrieve` found: the user's profile, relevant facts and episodes.

    ``facts`` and ``episodes`` are best first. ``channels`` counts candidates per channel
    (``dense``, ``bm25``, ``graph`` for episodes; ``fact_dense``, ``fact_bm25``, ``fact_graph`` for facts).
    """

    query: str
    profile: list[Fact]
    facts: list[ScoredFact]
    episodes: list[ScoredEpisode]
    channels: Mapping[str, int] = field(default_factory=dict)

    @property
    def episode_ids(self) -> list[str]:
        """Ids of the recalled episodes, best first (what the caller passes to ``mark_recalled``)."""
        return [e.episode_id for e in self.episodes]


@dataclass(frozen=True)
class RetrievalWeights:
    """Knobs of fusion and scoring. Defaults were tuned on LoCoMo conversations 1-2 (``bench/locomo.py``);
    ``bm25_min_share`` and ``dense`` also on PrefEval's first 300 items (round-robin over topics), where
    questions share no words with the preference and weak lexical hits buried it (recall@5 0.47 → 0.90).

    ``rrf_k`` None → ``MemoryConfig.rrf_k``. A small k (10) trusts the top of each list more than the
    customary 60; on the tuning slice 5-20 were equal and 60 was 3-5 points worse at recall@10.
    """

    # Fusion
    rrf_k: int | None = 10
    dense: float = 0.7  # channel weights in RRF; lexical-with-context is the stronger channel on dialogue
    bm25: float = 1.0
    bm25_min_share: float = 0.1  # lexical hits below this share of the query's IDF mass are noise
    graph: float = 1.0
    candidates_per_k: int = 4  # each channel contributes k · this candidates
    context_turns: int = 1  # neighbouring turns (each side, same session) indexed with a turn for BM25
    # Final score = relevance · fused + recency · retention + importance · importance
    relevance: float = 1.0
    recency: float = 0.01  # LoCoMo 1-2: 0 → 0.02 cost 0.5 points @10 (its questions have no recency bias)
    importance: float = 0.02
    # Profile
    profile_cap: int = 30

    def __post_init__(self) -> None:
        if self.rrf_k is not None and self.rrf_k < 1:
            raise InvalidInput(f"rrf_k must be >= 1 or None, got {self.rrf_k}")
        if min(self.dense, self.bm25, self.graph, self.relevance, self.recency, self.importance) < 0:
            raise InvalidInput("retrieval weights must be >= 0")
        if not 0.0 <= self.bm25_min_share <= 1.0:
            raise InvalidInput(f"bm25_min_share must be within [0, 1], got {self.bm25_min_share}")
        if self.candidates_per_k < 1 or self.context_turns < 0 or self.profile_cap < 0:
            raise InvalidInput("candidates_per_k must be >= 1, context_turns and profile_cap >= 0")


# ------------------------------------------------------------------------------------- fusion


def rrf(rankings: Sequence[Sequence[str]], *, k: int = 60, weights: Sequence[float] | None = None) -> dict[str, float]:
    """Reciprocal-rank fusion: ``score(d) = Σ_i weights[i] / (k + rank_i(d))``, ranks 1-based.

    An id absent from a ranking gets nothing from it; an id repeated within one ranking counts at its
    best rank only. Returns ids → scores (unsorted; sort by value for the fused order).
    """
    if k < 1:
        raise InvalidInput(f"rrf k must be >= 1, got {k}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise InvalidInput(f"rrf got {len(rankings)} rankings but {len(weights)} weights; give one weight per ranking")
    fused: dict[str, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights):
        seen: set[str] = set()
        for rank, item in enumerate(ranking, start=1):
            if item not in seen:
                seen.add(item)
                fused[item] += weight / (k + rank)
    return dict(fused)


def _fuse(channels: Mapping[str, Sequence[str]], weights: Mapping[str, float], k: int) -> dict[str, float]:
    """RRF over named channels, divided by the best possible score so the result is in ``[0, 1]``."""
    names = [n for n in channels if weights.get(n, 0.0) > 0.0]
    if not names:
        return {}
    fused = rrf([channels[n] for n in names], k=k, weights=[weights[n] for n in names])
    best = sum(weights[n] for n in names) / (k + 1)
    return {item: score / best for item, score in fused.items()}


def _ranked(scores: Mapping[str, float]) -> list[str]:
    return sorted(scores, key=lambda item: (-scores[item], item))


# ---------------------------------------------------------------------------------- timeline


@dataclass(frozen=True, order=True)
class _Entry:
    at: datetime
    recorded_at: datetime
    id: str
    text: str = field(compare=False)
    session_id: str = field(compare=False)


class _Timeline:
    """Each user's turns per session in time order, to give BM25 each turn's conversational context.

    Not thread-safe by itself; :class:`HybridRetriever` holds its lock around every call.
    """

    def __init__(self, context_turns: int) -> None:
        self._context = context_turns
        self._sessions: dict[str, dict[str, list[_Entry]]] = {}  # user → session → sorted entries
        self._where: dict[str, dict[str, _Entry]] = {}  # user → id → entry

    def load(self, user_id: str, episodes: Sequence[Episode]) -> tuple[list[str], list[str]]:
        """Replace the user's timeline → ``(ids, context texts)`` of every episode."""
        self._sessions[user_id], self._where[user_id] = {}, {}
        for episode in episodes:
            self._insert(user_id, episode)
        ids = list(self._where[user_id])
        return ids, [self.context_text(user_id, i) for i in ids]

    def add(self, user_id: str, episodes: Sequence[Episode]) -> tuple[list[str], list[str]]:
        """Insert (or replace) episodes → ``(ids, texts)`` of every document whose context changed."""
        self._sessions.setdefault(user_id, {})
        self._where.setdefault(user_id, {})
        touched: dict[str, None] = {}
        for episode in episodes:
            if episode.id in self._where[user_id]:  # a replaced turn: its old neighbours lose it
                touched.update(dict.fromkeys(self.window(user_id, episode.id)))
                self.remove(user_id, [episode.id])
            self._insert(user_id, episode)
            touched.update(dict.fromkeys(self.window(user_id, episode.id)))
        ids = [i for i in touched if i in self._where[user_id]]
        return ids, [self.context_text(user_id, i) for i in ids]

    def remove(self, user_id: str, ids: Sequence[str]) -> None:
        for episode_id in ids:
            entry = self._where.get(user_id, {}).pop(episode_id, None)
            if entry is not None:
                session = self._sessions[user_id][entry.session_id]
                session.pop(bisect.bisect_left(session, entry))

    def drop(self, user_id: str) -> None:
        self._sessions.pop(user_id, None)
        self._where.pop(user_id, None)

    def entry(self, user_id: str, episode_id: str) -> _Entry | None:
        return self._where.get(user_id, {}).get(episode_id)

    def _insert(self, user_id: str, episode: Episode) -> None:
        entry = _Entry(episode.at, episode.recorded_at, episode.id, episode.text, episode.session_id)
        bisect.insort(self._sessions[user_id].setdefault(episode.session_id, []), entry)
        self._where[user_id][episode.id] = entry

    def window(self, user_id: str, episode_id: str) -> list[str]:
        """Ids of the episode and its ``context_turns`` neighbours on each side, in session order."""
        entry = self._where[user_id][episode_id]
        session = self._sessions[user_id][entry.session_id]
        pos = bisect.bisect_left(session, entry)
        return [e.id for e in session[max(0, pos - self._context) : pos + self._context + 1]]

    def context_text(self, user_id: str, episode_id: str) -> str:
        """The turn's neighbours and the turn itself twice: context helps recall, the turn's own words
        still decide between neighbours (LoCoMo 1-2: recall@1 0.29 → 0.33, recall@10 unchanged)."""
        entries = self._where[user_id]
        window = self.window(user_id, episode_id)
        return " ".join(entries[i].text for i in window + [episode_id])


# ---------------------------------------------------------------------------------- helpers


def _meta_time(meta: Mapping[str, Any], name: str) -> datetime | None:
    if f"{name}_us" in meta:
        return _EPOCH + timedelta(microseconds=int(meta[f"{name}_us"]))
    if name in meta:
        return _EPOCH + timedelta(seconds=float(meta[name]))
    return None


def _query_entities(query: str, known: Sequence[str]) -> list[str]:
    """Capitalized words of the query, plus graph node names it contains (case-insensitive, whole words)."""
    words = [w for w in re.findall(r"\b[A-Z][\w'-]*", query) if w.casefold() not in _NOT_ENTITIES]
    folded = query.casefold()
    named = [n for n in known if len(n) > 2 and re.search(rf"(?<!\w){re.escape(n.casefold())}(?!\w)", folded)]
    return list(dict.fromkeys(words + named))


def _profile(facts: Sequence[Fact], cap: int) -> list[Fact]:
    """Preferences first, then identity relations in :data:`_IDENTITY` order, then the newest others."""

    def key(fact: Fact) -> tuple[int, int, float]:
        group = 0 if fact.kind == "preference" else 1 if fact.relation in _IDENTITY else 2
        rank = _IDENTITY.index(fact.relation) if fact.relation in _IDENTITY else 0
        return (group, rank, -fact.recorded_at.timestamp())

    return sorted(facts, key=key)[:cap]


# --------------------------------------------------------------------------------- retriever


class HybridRetriever:
    """Dense + BM25 + graph retrieval over one user's memory at a time. Thread-safe.

    Collaborators are injected (the :class:`memory.service.Memory` facade owns them); nothing is opened
    here. ``bm25`` may be shared or private; this retriever feeds it context-expanded episode texts.
    ``weights`` may be replaced between calls (e.g. for tuning), except ``context_turns``, which is read
    once here because the index is built with it.
    """

    def __init__(
        self,
        episodic: "EpisodicStore",
        semantic: "SemanticStore",
        graph: "KnowledgeGraph",
        embedder: Embedder,
        bm25: BM25Index,
        clock: Clock,
        config: MemoryConfig,
        *,
        weights: RetrievalWeights | None = None,
    ) -> None:
        self._episodic, self._semantic, self._graph = episodic, semantic, graph
        self._embedder, self._bm25, self._clock, self._config = embedder, bm25, clock, config
        self.weights = weights or RetrievalWeights()
        self._timeline = _Timeline(self.weights.context_turns)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ keeping the index current

    def ensure_loaded(self, user_id: str) -> None:
        """Load the user's episodes from the episodic store into the lexical index, once per process."""
        with self._lock:
            if self._bm25.has_user(user_id):
                return
            ids, texts = self._timeline.load(user_id, self._episodic.get(user_id))
            self._bm25.load_user(user_id, ids, texts)
            log.debug("loaded %d episodes of %s into the lexical index", len(ids), user_id)

    def index(self, episodes: Sequence[Episode]) -> None:
        """Make newly stored episodes searchable lexically (call after ``EpisodicStore.add``)."""
        by_user: dict[str, list[Episode]] = defaultdict(list)
        for episode in episodes:
            by_user[episode.user_id].append(episode)
        with self._lock:
            for user_id, batch in by_user.items():
                if not self._bm25.has_user(user_id):
                    self.ensure_loaded(user_id)  # the store already holds ``batch``: loading covers it
                    continue
                ids, texts = self._timeline.add(user_id, batch)
                self._bm25.add(user_id, ids, texts)

    def remove(self, user_id: str, episode_ids: Sequence[str]) -> None:
        """Forget deleted episodes (their neighbours' context is rebuilt)."""
        with self._lock:
            if not self._bm25.has_user(user_id):
                return
            neighbours = [n for i in episode_ids if self._timeline.entry(user_id, i) for n in self._timeline.window(user_id, i)]
            self._timeline.remove(user_id, episode_ids)
            self._bm25.remove(user_id, episode_ids)
            live = [n for n in dict.fromkeys(neighbours) if self._timeline.entry(user_id, n)]
            texts = [self._timeline.context_text(user_id, n) for n in live]
            self._bm25.add(user_id, live, texts)

    def drop_user(self, user_id: str) -> None:
        """Forget the user's cached index (after ``forget`` or an import; it reloads on next use)."""
        with self._lock:
            self._timeline.drop(user_id)
            self._bm25.drop_user(user_id)

    def mark_recalled(self, user_id: str, episode_ids: Sequence[str]) -> None:
        """Count one more recall of each episode and stamp ``last_recalled`` with the clock's now."""
        if not episode_ids:
            return
        now = to_utc(self._clock.now()).timestamp()
        current = self._episodic.metadata(user_id, list(episode_ids))
        updates = {i: {"recall_count": int(m.get("recall_count", 0)) + 1, "last_recalled": now} for i, m in current.items()}
        self._episodic.update_metadata(user_id, updates)

    # ------------------------------------------------------------------------------- retrieval

    def retrieve(
        self,
        user_id: str,
        query: str,
        *,
        k_episodes: int | None = None,
        k_facts: int | None = None,
        include_superseded: bool = False,
        as_of: datetime | None = None,
    ) -> Recollection:
        """The user's profile, the ``k_facts`` most relevant facts and ``k_episodes`` episodes for ``query``."""
        k_episodes = self._config.recall_k if k_episodes is None else k_episodes
        k_facts = self._config.fact_k if k_facts is None else k_facts
        self._check(user_id, query, k_episodes, k_facts)
        as_of = to_utc(as_of) if as_of is not None else None
        now = as_of or self._clock.now()
        self.ensure_loaded(user_id)
        vector = self._embedder.embed([query])[0]  # (dim,)

        facts = self._graph.facts(user_id, as_of=as_of, include_superseded=include_superseded)
        graph_facts = self._neighbourhood(user_id, query, facts, as_of)
        scored_facts, fact_counts = self._rank_facts(user_id, query, vector, facts, graph_facts, k_facts, include_superseded)
        graph_episodes = [e for f in graph_facts for e in f.source_episode_ids]
        episodes, episode_counts = self._rank_episodes(user_id, query, vector, graph_episodes, k_episodes, now, as_of)
        current = [f for f in facts if f.current] if as_of is None else [f for f in facts if f.valid_at(as_of)]
        return Recollection(
            query=query,
            profile=_profile(current, self.weights.profile_cap),
            facts=scored_facts,
            episodes=episodes,
            channels={**episode_counts, **fact_counts},
        )

    @staticmethod
    def _check(user_id: str, query: str, k_episodes: int, k_facts: int) -> None:
        if not isinstance(user_id, str) or not user_id.strip():
            raise InvalidInput(f"user_id must be a non-empty string, got {user_id!r}")
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must be a non-empty string; pass the user's message or question")
        for name, value in (("k_episodes", k_episodes), ("k_facts", k_facts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"{name} must be an int >= 0, got {value!r}")

    def _neighbourhood(self, user_id: str, query: str, facts: Sequence[Fact], as_of: datetime | None) -> list[Fact]:
        """Facts one hop from the entities the query names (in the graph's discovery order)."""
        names = list(dict.fromkeys(n for f in facts for n in (f.subject, f.object)))
        entities = _query_entities(query, names)
        if not entities:
            return []
        if as_of is None:
            return self._graph.neighbourhood(user_id, entities, hops=1)
        wanted = {e.casefold() for e in entities}  # the graph's neighbourhood is "now"; replay as_of here
        return [f for f in facts if f.subject.casefold() in wanted or f.object.casefold() in wanted]

    # ------------------------------------------------------------------------------------ facts

    def _rank_facts(
        self,
        user_id: str,
        query: str,
        vector: Any,
        facts: Sequence[Fact],
        graph_facts: Sequence[Fact],
        k: int,
        include_superseded: bool,
    ) -> tuple[list[ScoredFact], dict[str, int]]:
        by_id = {f.id: f for f in facts}
        if k == 0 or not by_id:
            return [], {"fact_dense": 0, "fact_bm25": 0, "fact_graph": 0}
        n = k * self.weights.candidates_per_k
        hits = self._semantic.query(user_id, vector, n, kinds=["fact", "preference"], include_superseded=include_superseded)
        channels = {
            "dense": [fid for h in hits if (fid := h.metadata.get("fact_id")) in by_id],
            "bm25": self._fact_bm25(query, list(by_id.values()), n),
            "graph": [f.id for f in graph_facts if f.id in by_id],
        }
        fused = _fuse(channels, self._channel_weights(), self._rrf_k())
        top = _ranked(fused)[:k]
        scored = [ScoredFact(by_id[i], self.weights.relevance * fused[i] + self.weights.importance * by_id[i].confidence) for i in top]
        scored.sort(key=lambda s: -s.score)
        return scored, {f"fact_{name}": len(ids) for name, ids in channels.items()}

    @staticmethod
    def _fact_bm25(query: str, facts: Sequence[Fact], n: int) -> list[str]:
        """BM25 over the facts' sentences, computed on the fly (a user has hundreds of facts, not millions)."""
        q = tokenize([query])[0]
        docs = tokenize([f.text() for f in facts])
        if not q or not docs:
            return []
        df: dict[str, int] = defaultdict(int)
        for doc in docs:
            for term in set(doc):
                df[term] += 1
        avgdl = max(1.0, sum(map(len, docs)) / len(docs))
        scores = lucene_scores(q, docs, len(docs), df, avgdl)
        order = sorted(range(len(facts)), key=lambda j: -scores[j])
        return [facts[j].id for j in order[:n] if scores[j] > 0]

    # --------------------------------------------------------------------------------- episodes

    def _rank_episodes(
        self,
        user_id: str,
        query: str,
        vector: Any,
        graph_episodes: Sequence[str],
        k: int,
        now: datetime,
        as_of: datetime | None,
    ) -> tuple[list[ScoredEpisode], dict[str, int]]:
        if k == 0:
            return [], {"dense": 0, "bm25": 0, "graph": 0}
        n = k * self.weights.candidates_per_k
        where = {"at": {"$lte": as_of}} if as_of is not None else None
        hits = {h.id: h for h in self._episodic.query(user_id, vector, n, where=where)}
        channels = {
            "dense": list(hits),
            "bm25": [i for i, _ in self._bm25.search(user_id, query, n, min_share=self.weights.bm25_min_share)],
            "graph": list(dict.fromkeys(graph_episodes)),
        }
        fused = _fuse(channels, self._channel_weights(), self._rrf_k())
        # Recency/importance only reorder candidates that relevance put in contention.
        pool = _ranked(fused)[: max(n, k)]
        meta = self._episode_metadata(user_id, pool, hits)
        if as_of is not None:
            pool = [i for i in pool if i in meta and (at := _meta_time(meta[i], "at")) is not None and at <= as_of]
        scored = [self._score_episode(i, fused[i], meta[i], channels, now) for i in pool if i in meta]
        scored.sort(key=lambda s: (-s.score, s.episode_id))
        return scored[:k], {name: len(ids) for name, ids in channels.items()}

    def _episode_metadata(self, user_id: str, ids: Sequence[str], hits: Mapping[str, "Hit"]) -> dict[str, dict[str, Any]]:
        """Metadata (+ ``text``) of each candidate: from its dense hit, else one scoped store read."""
        meta = {i: {**hits[i].metadata, "text": hits[i].text} for i in ids if i in hits}
        missing = [i for i in ids if i not in hits]
        if missing:
            for i, m in self._episodic.metadata(user_id, missing).items():
                with self._lock:
                    entry = self._timeline.entry(user_id, i)
                text = entry.text if entry is not None else None
                if text is None:  # not in the timeline (a race with remove): read it
                    got = self._episodic.get(user_id, [i])
                    text = got[0].text if got else None
                if text is not None:
                    meta[i] = {**m, "text": text}
        return meta

    def _score_episode(
        self, episode_id: str, fused: float, meta: Mapping[str, Any], channels: Mapping[str, Sequence[str]], now: datetime
    ) -> ScoredEpisode:
        w = self.weights
        at = _meta_time(meta, "at") or now
        last = _meta_time(meta, "last_recalled") or at
        stability = stability_days(self._config.half_life_days, int(meta.get("recall_count", 0)))
        importance = float(meta.get("importance", 0.5))
        score = w.relevance * fused + w.recency * retention(now, last, stability) + w.importance * importance
        return ScoredEpisode(
            episode_id=episode_id,
            text=str(meta["text"]),
            at=at,
            session_id=str(meta.get("session_id", "")),
            role=str(meta.get("role", "user")),
            score=score,
            sources=tuple(name for name, ids in channels.items() if episode_id in ids),
        )

    def _channel_weights(self) -> dict[str, float]:
        return {"dense": self.weights.dense, "bm25": self.weights.bm25, "graph": self.weights.graph}

    def _rrf_k(self) -> int:
        return self.weights.rrf_k if self.weights.rrf_k is not None else self._config.rrf_k
