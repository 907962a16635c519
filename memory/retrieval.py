"""Hybrid retrieval: dense (Chroma) + lexical (BM25 with dialogue context) + knowledge graph, fused.

One :meth:`HybridRetriever.retrieve` call, in the order data flows:

1. embed the query once;
2. **dense**: nearest episodes (episodic store) and facts/preferences (semantic store);
3. **bm25**: lexical hits over episodes, each indexed *with its neighbouring turns of the same session*
   (a reply like "Yes, it was amazing!" is found by the question it answers), and over the user's facts;
4. **graph**: entities named in the query (capitalized words and graph node names) → their 1-hop
   neighbourhood in the user's knowledge graph → those facts, and the episodes that are their evidence;
5. fusion: episodes by standardized scores (:func:`zscore_fusion`: each channel's scores as z-scores over
   its own candidate list, so a channel counts by how far its hits stand out *for this query*); facts and
   summaries, whose candidate lists are short, by reciprocal-rank fusion (:func:`rrf`); both in ``[0, 1]``;
6. final episode score = ``relevance·fused + recency·retention + importance·importance``, where retention
   is the Ebbinghaus curve of :mod:`memory.forgetting` (stability grows with each recall);
7. superseded facts are left out unless ``include_superseded``; ``as_of`` restricts everything to what
   was known and true then;
7b. the question's intent (:mod:`memory.query_intent`: current or past, a time window, the assistant's
   words) re-ranks the episode candidates (:mod:`memory.ranking`): evidence of updated facts, turns of
   the named period (a window-filtered dense query adds candidates), assistant turns;
8. **summaries** of old sessions (written by :mod:`memory.consolidation` into the semantic store): dense +
   BM25 over the user's summaries, fused by RRF.

Invariants: every store call is scoped to one ``user_id`` (no channel can surface another user's data);
``retrieve`` writes nothing — bumping recall statistics is :meth:`HybridRetriever.mark_recalled`, which the
caller invokes for the episodes it actually used.

The lexical indexes are in-process caches: a user's episodes are loaded from the episodic store on first
use (:meth:`HybridRetriever.ensure_loaded`) and new ones must be passed to :meth:`HybridRetriever.index`;
summaries are loaded from the semantic store on first use, new ones are passed to
:meth:`HybridRetriever.index_summaries` (a summary the dense channel returns that the cache lacks is added
on the spot, so a writer that forgets to call it only delays lexical matching).

Other writers (another process, or another ``Memory`` on the same home) do not call these methods, so
with a ``versions`` source (the user's write stamp, :class:`memory.db.UserVersions`) the caches remember
the stamp they were built at: :meth:`HybridRetriever.retrieve` drops a user's caches when the stamp
moved, and a writer in this process reports its own write with :meth:`HybridRetriever.advance` (its
caches stay when they were current, and it updates them incrementally as before).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal


from memory.bm25 import BM25Index, DialogueTimeline, lucene_scores, tokenize
from memory.clock import Clock, to_utc
from memory.config import MemoryConfig
from memory.embeddings import Embedder
from memory.errors import InvalidInput
from memory.forgetting import retention, stability_days
from memory.fusion import normalized_rrf, rrf, zscore_fusion
from memory.query_intent import QueryIntent, classify_query
from memory.ranking import IntentRanking, RankingWeights
from memory.records import Episode, Fact

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from memory.graph import KnowledgeGraph
    from memory.stores import EpisodicStore, Hit, MemoryItem, SemanticStore

__all__ = [
    "BM25Index",
    "HybridRetriever",
    "Recollection",
    "RetrievalWeights",
    "ScoredEpisode",
    "ScoredFact",
    "ScoredSummary",
    "rrf",
    "zscore_fusion",
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
class ScoredSummary:
    """A recalled summary of past sessions (see :mod:`memory.consolidation`) with its fused score.

    ``at`` is the end of the summarized span; ``sources`` ⊆ {"dense", "bm25"}.
    """

    summary_id: str
    text: str
    at: datetime
    source_episode_ids: tuple[str, ...]
    score: float
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Recollection:
    """What :meth:`HybridRetriever.retrieve` found: the user's profile, relevant facts, episodes, summaries.

    ``facts``, ``episodes`` and ``summaries`` are best first. ``channels`` counts candidates per channel
    (``dense``, ``bm25``, ``graph`` for episodes; ``fact_dense``, ``fact_bm25``, ``fact_graph`` for facts;
    ``summary_dense``, ``summary_bm25`` for summaries). ``intent``: how the query was read (current or
    past, a time window, about the assistant's words; :mod:`memory.query_intent`) — the episodes are
    ranked by it. ``stale_episode_ids``: for a question about the present, the recalled turns that stated
    a value of the asked-about fact that is no longer true ("I live in Lisbon." once the user moved to
    Porto) — kept in ``episodes`` for callers that want the history, left out of the prompt's notes.
    """

    query: str
    profile: list[Fact]
    facts: list[ScoredFact]
    episodes: list[ScoredEpisode]
    channels: Mapping[str, int] = field(default_factory=dict)
    summaries: list[ScoredSummary] = field(default_factory=list)
    intent: QueryIntent = field(default_factory=QueryIntent)
    stale_episode_ids: tuple[str, ...] = ()

    @property
    def episode_ids(self) -> list[str]:
        """Ids of the recalled episodes, best first (what the caller passes to ``mark_recalled``)."""
        return [e.episode_id for e in self.episodes]


@dataclass(frozen=True)
class RetrievalWeights:
    """Knobs of fusion and scoring, tuned on LoCoMo conversations 1-2 (``bench/locomo.py``) and PrefEval's
    first 300 items (``bench/prefeval.py``, round-robin over topics), checked on PrefEval items 500-799;
    figures below are recall@5 / @10 on those slices (held out: conversations 3-10, PrefEval items 300-499).

    Episode fusion (``fusion``). RRF ranks ignore how far a hit stands out, so on PrefEval, where the
    question shares no words with the stated preference, a filler turn found by both channels outranked a
    preference that dense search put first by a wide margin (RRF: LoCoMo .643/.759, PrefEval .900/.970,
    dense alone .970/.993). ``"zscore"`` (:func:`zscore_fusion`) weights each channel by how far its hits
    stand out for this query: LoCoMo .653/.746, PrefEval .967/.993. Measured and dropped: RRF with
    per-query channel weights from the BM25 top hit's IDF share (LoCoMo .624/.752, PrefEval .933/.983) or
    from the dense top-1/top-2 margin (.668/.758, .907/.970); min-max normalized scores (.654/.739,
    .950/.993); raw cosine + IDF share (.517/.591, .967/.990); z-scores with BM25 scaled by its IDF share
    (.656/.742, .967/.987); the evidence episodes of the best facts as a fourth channel (@10 −1 point on
    LoCoMo, no change on PrefEval).

    ``bm25_min_share``: lexical hits below this share of the query's IDF mass are noise. With ``"zscore"``
    they still count in the list's statistics but add nothing (0.10 → LoCoMo .664/.755, PrefEval
    .963/.990; 0.12 → .653/.746, .967/.993; 0.15 → .634/.737, .967/.993); with ``"rrf"`` they are dropped.

    ``assistant_turns``: what the user said is the evidence about the user (the agent's prompt quotes only
    the user's own turns), so an assistant turn needs more relevance to displace a user turn. PrefEval,
    where about half the filler turns are the assistant's: 1.0 → .967/.993, 0.8 → .970/.997, 0.5 →
    .980/1.000 (items 500-799: 1.0 → .980/.987, 0.5 → .987/.997, 0.3 → .993/.997; dense alone .987/.987,
    old RRF defaults .900/.960); LoCoMo stores every turn as the user's, so it is unaffected there.

    ``rrf_k`` None → ``MemoryConfig.rrf_k`` (10: on LoCoMo 1-2, k of 5-20 were equal and 60 was 3-5 points
    worse at recall@10). ``candidates_per_k``: 8 over 4 gave LoCoMo +0.9/+0.2 points (longer lists give
    steadier z-scores); PrefEval users have fewer turns than that.

    ``intent``: the re-ranking by the question's intent (updates, time anchors, the assistant's words),
    with its own measured knobs (:class:`memory.ranking.RankingWeights`).
    """

    # Fusion
    fusion: Literal["zscore", "rrf"] = "zscore"  # for episodes; facts and summaries always use RRF
    rrf_k: int | None = None
    dense: float = 0.7  # channel weights; lexical-with-context is the stronger channel on dialogue
    bm25: float = 1.0  # (zscore: 0.6-0.85 for dense and 1.0-1.5 for bm25 were within a point)
    bm25_min_share: float = 0.12
    graph: float = 1.0
    graph_z: float = 3.0  # zscore: a graph hit of rank 1 counts as a hit this many deviations above the mean
    assistant_turns: float = 0.5  # relevance multiplier of the assistant's own turns (see above)
    candidates_per_k: int = 8  # each channel contributes k · this candidates
    context_turns: int = 1  # neighbouring turns (each side, same session) indexed with a turn for BM25
    # Final score = relevance · fused + recency · retention + importance · importance
    relevance: float = 1.0
    recency: float = 0.01  # LoCoMo 1-2: 0 → 0.02 cost 0.5 points @10 (its questions have no recency bias)
    importance: float = 0.02
    # Profile
    profile_cap: int = 30
    # Intent re-ranking
    intent: RankingWeights = field(default_factory=RankingWeights)

    def __post_init__(self) -> None:
        if self.fusion not in ("zscore", "rrf"):
            raise InvalidInput(f"fusion must be 'zscore' or 'rrf', got {self.fusion!r}")
        if self.rrf_k is not None and self.rrf_k < 1:
            raise InvalidInput(f"rrf_k must be >= 1 or None, got {self.rrf_k}")
        if min(self.dense, self.bm25, self.graph, self.graph_z, self.relevance, self.recency, self.importance) < 0:
            raise InvalidInput("retrieval weights must be >= 0")
        if not 0.0 <= self.assistant_turns <= 1.0:
            raise InvalidInput(f"assistant_turns must be within [0, 1], got {self.assistant_turns}")
        if not 0.0 <= self.bm25_min_share <= 1.0:
            raise InvalidInput(f"bm25_min_share must be within [0, 1], got {self.bm25_min_share}")
        if self.candidates_per_k < 1 or self.context_turns < 0 or self.profile_cap < 0:
            raise InvalidInput("candidates_per_k must be >= 1, context_turns and profile_cap >= 0")


def _ranked(scores: Mapping[str, float]) -> list[str]:
    return sorted(scores, key=lambda item: (-scores[item], item))


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
    here. ``bm25`` may be shared or private; this retriever feeds it context-expanded episode texts
    (summaries get a private index of their own). ``weights`` may be replaced between calls (e.g. for
    tuning), except ``context_turns``, which is read once here because the index is built with it.
    ``versions``: user id → the user's current write stamp (see the module docstring); None: the caches
    trust that every write goes through this object.
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
        versions: Callable[[str], int] | None = None,
    ) -> None:
        self._episodic, self._semantic, self._graph = episodic, semantic, graph
        self._versions = versions
        self._seen: dict[str, int] = {}  # user → the write stamp the user's caches were built at
        self._embedder, self._bm25, self._clock, self._config = embedder, bm25, clock, config
        self.weights = weights or RetrievalWeights()
        self._timeline = DialogueTimeline(self.weights.context_turns)
        self._summary_bm25 = BM25Index()  # over summary texts; its own index, never mixed with episodes
        self._summaries: dict[str, dict[str, "MemoryItem"]] = {}  # user → summary id → item (the cache)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ keeping the index current

    def ensure_loaded(self, user_id: str) -> None:
        """Load the user's episodes from the episodic store into the lexical index (once, until a change by
        another writer drops it)."""
        with self._lock:
            if self._bm25.has_user(user_id):
                return
            # The stamp is read before the store: the caches may be newer than it (one extra reload), never older.
            if self._versions is not None:
                self._seen[user_id] = self._versions(user_id)
            ids, texts = self._timeline.load(user_id, self._episodic.get(user_id))
            self._bm25.load_user(user_id, ids, texts)
            log.debug("loaded %d episodes of %s into the lexical index", len(ids), user_id)

    def refresh(self, user_id: str) -> None:
        """Drop the user's caches if someone else wrote about the user since they were built."""
        if self._versions is None:
            return
        version = self._versions(user_id)
        with self._lock:
            if user_id in self._seen and self._seen[user_id] != version:
                log.debug("%s changed elsewhere (write %d, cached %d): reloading", user_id, version, self._seen[user_id])
                self.drop_user(user_id)

    def advance(self, user_id: str, before: int, after: int) -> None:
        """This process moved the user's stamp from ``before`` to ``after`` (and will tell the caches what it
        wrote: :meth:`index`, :meth:`remove`, :meth:`index_summaries`). Caches built at ``before`` stay;
        older ones are dropped, because another writer came in between."""
        if self._versions is None:
            return
        with self._lock:
            if self._seen.get(user_id) == before:
                self._seen[user_id] = after
            else:
                self.drop_user(user_id)

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

    def index_summaries(self, items: Sequence["MemoryItem"]) -> None:
        """Make newly stored summaries searchable lexically (call after ``SemanticStore.add`` of summaries).

        Items of another kind are ignored; a user whose summaries were never loaded loads them all on the
        next retrieval instead.
        """
        by_user: dict[str, list["MemoryItem"]] = defaultdict(list)
        for item in items:
            if item.kind == "summary":
                by_user[item.user_id].append(item)
        with self._lock:
            for user_id, batch in by_user.items():
                if user_id in self._summaries:
                    self._cache_summaries(user_id, batch)

    def _cache_summaries(self, user_id: str, items: Sequence["MemoryItem"]) -> None:
        """Add or replace summaries in the user's lexical cache. Caller holds the lock."""
        self._summaries.setdefault(user_id, {}).update((i.id, i) for i in items)
        if items:
            self._summary_bm25.add(user_id, [i.id for i in items], [i.text for i in items])

    def _ensure_summaries(self, user_id: str) -> None:
        with self._lock:
            if user_id not in self._summaries:
                items = [i for i in self._semantic.get(user_id) if i.kind == "summary"]
                self._summary_bm25.load_user(user_id, [i.id for i in items], [i.text for i in items])
                self._summaries[user_id] = {i.id: i for i in items}

    def drop_user(self, user_id: str) -> None:
        """Forget the user's cached index (after ``forget`` or an import; it reloads on next use)."""
        with self._lock:
            self._seen.pop(user_id, None)
            self._timeline.drop(user_id)
            self._bm25.drop_user(user_id)
            self._summaries.pop(user_id, None)
            self._summary_bm25.drop_user(user_id)

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
        k_summaries: int | None = None,
        include_superseded: bool = False,
        as_of: datetime | None = None,
        query_vector: np.ndarray | None = None,
    ) -> Recollection:
        """The user's profile and the ``k_facts`` facts, ``k_episodes`` episodes and ``k_summaries``
        session summaries most relevant to ``query`` (``None`` → the config's ``fact_k``/``recall_k``/
        ``summary_k``; 0 skips that kind). ``query_vector``: the query's embedding, when the caller has it."""
        k_episodes = self._config.recall_k if k_episodes is None else k_episodes
        k_facts = self._config.fact_k if k_facts is None else k_facts
        k_summaries = self._config.summary_k if k_summaries is None else k_summaries
        self._check(user_id, query, k_episodes, k_facts, k_summaries)
        as_of = to_utc(as_of) if as_of is not None else None
        now = as_of or self._clock.now()
        self.refresh(user_id)
        self.ensure_loaded(user_id)
        vector = self._embedder.embed([query])[0] if query_vector is None else query_vector  # (dim,)
        intent = classify_query(query, now)

        every = self._graph.facts(user_id, as_of=as_of, include_superseded=True)
        facts = every if include_superseded else [f for f in every if (f.current if as_of is None else f.valid_at(as_of))]
        graph_facts = self._neighbourhood(user_id, query, facts, as_of)
        scored_facts, fact_counts = self._rank_facts(user_id, query, vector, facts, graph_facts, k_facts, include_superseded)
        graph_episodes = [e for f in graph_facts for e in f.source_episode_ids]
        ranking = IntentRanking.from_facts(intent, query, every, self.weights.intent, self.weights.assistant_turns, as_of)
        episodes, episode_counts = self._rank_episodes(user_id, query, vector, graph_episodes, k_episodes, now, as_of,
                                                       ranking)
        summaries, summary_counts = self._rank_summaries(user_id, query, vector, k_summaries, as_of)
        current = [f for f in facts if f.current] if as_of is None else [f for f in facts if f.valid_at(as_of)]
        return Recollection(
            query=query,
            profile=_profile(current, self.weights.profile_cap),
            facts=scored_facts,
            episodes=episodes,
            channels={**episode_counts, **fact_counts, **summary_counts},
            summaries=summaries,
            intent=intent,
            stale_episode_ids=tuple(e.episode_id for e in episodes if e.episode_id in ranking.evidence.superseded)
            if intent.tense == "current" and intent.window is None else (),
        )

    @staticmethod
    def _check(user_id: str, query: str, k_episodes: int, k_facts: int, k_summaries: int) -> None:
        if not isinstance(user_id, str) or not user_id.strip():
            raise InvalidInput(f"user_id must be a non-empty string, got {user_id!r}")
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must be a non-empty string; pass the user's message or question")
        for name, value in (("k_episodes", k_episodes), ("k_facts", k_facts), ("k_summaries", k_summaries)):
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
        fused = normalized_rrf(channels, self._channel_weights(), self._rrf_k())
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
        ranking: IntentRanking,
    ) -> tuple[list[ScoredEpisode], dict[str, int]]:
        if k == 0:
            return [], {"dense": 0, "bm25": 0, "graph": 0}
        n = k * self.weights.candidates_per_k
        where = {"at": {"$lte": as_of}} if as_of is not None else None
        hits = {h.id: h for h in self._episodic.query(user_id, vector, n, where=where)}
        if (window := ranking.intent.window) is not None:  # the named period's best turns join the dense list
            bounds = [{"at": {"$gte": window.start}}, {"at": {"$lt": min(window.end, as_of or window.end)}}]
            extra = self._episodic.query(user_id, vector, n, where={"$and": bounds})
            merged = sorted([*hits.values(), *(h for h in extra if h.id not in hits)], key=lambda h: -h.similarity)
            hits = {h.id: h for h in merged}
        lexical = self._bm25.search(user_id, ranking.lexical_query(query), n, normalized=True)  # shares of its IDF
        channels = {
            "dense": list(hits),
            "bm25": [i for i, share in lexical if share >= self.weights.bm25_min_share],
            "graph": list(dict.fromkeys(graph_episodes)),
        }
        if self.weights.fusion == "rrf":
            fused = normalized_rrf(channels, self._channel_weights(), self._rrf_k())
        else:
            scored = {"dense": [(i, h.similarity) for i, h in hits.items()], "bm25": lexical}
            fused = zscore_fusion(scored, self._channel_weights(), floors={"bm25": self.weights.bm25_min_share},
                                  ranked={"graph": channels["graph"]}, rank_z=self.weights.graph_z, k=self._rrf_k())
        # Recency/importance only reorder candidates that relevance put in contention.
        pool = list(dict.fromkeys(_ranked(fused)[: max(n, k)] + ranking.extra_candidates()))
        meta = self._episode_metadata(user_id, pool, hits)
        if as_of is not None:
            pool = [i for i in pool if i in meta and (at := _meta_time(meta[i], "at")) is not None and at <= as_of]
        found = {name: set(ids) for name, ids in channels.items()}
        ranked = [self._score_episode(i, fused.get(i, 0.0), meta[i], found, now, ranking) for i in pool if i in meta]
        ranked.sort(key=lambda s: (-s.score, s.episode_id))
        return ranked[:k], {name: len(ids) for name, ids in channels.items()}

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
        self, episode_id: str, fused: float, meta: Mapping[str, Any], found: Mapping[str, set[str]], now: datetime,
        ranking: IntentRanking,
    ) -> ScoredEpisode:
        w = self.weights
        at = _meta_time(meta, "at") or now
        last = _meta_time(meta, "last_recalled") or at
        stability = stability_days(self._config.half_life_days, int(meta.get("recall_count", 0)))
        importance = float(meta.get("importance", 0.5))
        fused = ranking.relevance(episode_id, fused, at, str(meta.get("role", "user")))
        score = w.relevance * fused + w.recency * retention(now, last, stability) + w.importance * importance
        return ScoredEpisode(
            episode_id=episode_id,
            text=str(meta["text"]),
            at=at,
            session_id=str(meta.get("session_id", "")),
            role=str(meta.get("role", "user")),
            score=score,
            sources=tuple(name for name, ids in found.items() if episode_id in ids),
        )

    # -------------------------------------------------------------------------------- summaries

    def _rank_summaries(
        self, user_id: str, query: str, vector: Any, k: int, as_of: datetime | None
    ) -> tuple[list[ScoredSummary], dict[str, int]]:
        """Dense + BM25 over the user's session summaries, fused by RRF (a user has one per old session).

        ``as_of`` keeps the summaries whose span had ended by then (a summary's ``at``).
        """
        if k == 0:
            return [], {"summary_dense": 0, "summary_bm25": 0}
        n = k * self.weights.candidates_per_k
        where = {"at": {"$lte": as_of}} if as_of is not None else None
        hits = self._semantic.query(user_id, vector, n, kinds=["summary"], where=where)
        self._ensure_summaries(user_id)
        with self._lock:
            cache = self._summaries[user_id]
            unseen = [h for h in hits if h.id not in cache]  # written without index_summaries: learn them now
            if unseen:
                self._cache_summaries(user_id, self._semantic.get(user_id, [h.id for h in unseen]))
            items = dict(cache)
        lexical = [i for i, _ in self._summary_bm25.search(user_id, query, n) if i in items]
        channels = {
            "dense": [h.id for h in hits if h.id in items],
            "bm25": [i for i in lexical if as_of is None or items[i].at <= as_of],
        }
        fused = normalized_rrf(channels, {"dense": self.weights.dense, "bm25": self.weights.bm25}, self._rrf_k())
        found = {name: set(ids) for name, ids in channels.items()}
        summaries = [
            ScoredSummary(i, items[i].text, items[i].at, items[i].source_episode_ids, self.weights.relevance * fused[i],
                          tuple(name for name, ids in found.items() if i in ids))
            for i in _ranked(fused)[:k]
        ]
        return summaries, {f"summary_{name}": len(ids) for name, ids in channels.items()}

    def _channel_weights(self) -> dict[str, float]:
        return {"dense": self.weights.dense, "bm25": self.weights.bm25, "graph": self.weights.graph}

    def _rrf_k(self) -> int:
        return self.weights.rrf_k if self.weights.rrf_k is not None else self._config.rrf_k
