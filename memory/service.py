"""The memory facade: one object that remembers turns and recalls what a prompt needs.

``Memory`` composes the episodic and semantic Chroma stores, the knowledge graph (SQLite event log +
networkx), the extractor, the BM25 index, the retriever and the drift monitor. Per turn:

``remember``: validate → extract → embed → one SQLite transaction (episode row + graph events) around
the Chroma writes, with a journal entry so a crash at any point leaves both sides in agreement →
change events. ``recall``: hybrid retrieval, then the recalled episodes get stronger (recall count,
last recalled) — buffered in memory, not written on the hot path: a user's pending recalls are flushed
to the episodic store in one write at that user's next ``remember`` (after its commit), before the cap or
consolidation reads the statistics, on ``export`` and on ``close`` (``forget`` drops them). Until then
ranking sees the statistics as of the last flush, and a crash loses at most those pending counts.

Processes. A writable ``Memory`` on an embedded home holds the home's writer lock for its lifetime
(:mod:`memory.home_lock`: a second writing process gets ``HomeInUse``); ``Memory(config,
read_only=True)`` takes no lock, refuses every write (``ReadOnlyMemory``) and sees the writer's commits
(over an embedded home it reads SQLite only and its recall is lexical + graph: see :mod:`memory.readonly`).
With a Chroma server (``chroma_url``) no lock is taken and several processes may write: every SQLite
write waits for the others (busy timeout), the graph decides supersessions inside the write transaction,
and each write stamps the user's version (:class:`memory.db.UserVersions`) so every process's caches
(materialized graphs, lexical indexes, summaries) notice the others' writes.

Invariants: every read and write is scoped to one user; a failed turn leaves nothing behind; the
graph log is append-only except for ``forget``.
"""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memory.clock import Clock, SystemClock, to_utc
from memory.config import MemoryConfig
from memory.db import SqliteDb, UserVersions
from memory.embeddings import Embedder, MiniLMEmbedder
from memory.episodes import EpisodeLog
from memory.errors import InvalidInput, PllmMemoryError, ReadOnlyMemory, StoreError
from memory.feedback import Feedback, FeedbackLog
from memory.journal import Intent, Journal
from memory.parts import MemoryParts, fact_item, semantic_changes
from memory.records import ChangeEvent, Episode, Fact, PreferenceDrift, Role
from memory.summaries import SummaryLog
from memory.validation import check_user_id, clean_text

if TYPE_CHECKING:  # pragma: no cover
    from memory.extraction import Extractor
    from memory.graph import HistoryEntry
    from memory.preferences import PreferenceWeight
    from memory.retrieval import Recollection

__all__ = ["Memory", "Rated", "Remembered"]

log = logging.getLogger(__name__)

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # fullmatch


@dataclass(frozen=True)
class Rated:
    """What one ``rate`` call stored and changed (``PreferenceDrift`` when a weight turned to the other pole)."""

    feedback: Feedback
    events: tuple[ChangeEvent, ...] = ()


@dataclass(frozen=True)
class Remembered:
    """What one ``remember`` call stored and changed."""

    episode: Episode
    events: tuple[ChangeEvent, ...]


class Memory:
    """Lifelong memory for many users: Chroma (episodes, facts, summaries) + a knowledge graph.

    ``read_only=True``: inspect a home another process writes to (``pllm memory show`` during a chat):
    no writer lock, no crash recovery, no recall statistics; every write raises ``ReadOnlyMemory``. Over
    an embedded home it does not open Chroma (:mod:`memory.readonly` says why): facts, history, episodes
    and export are complete, recall has no dense channel. The home must exist.
    """

    def __init__(self, config: MemoryConfig, *, embedder: Embedder | None = None,
                 extractor: "Extractor | None" = None, clock: Clock | None = None, client: Any = None,
                 read_only: bool = False) -> None:
        from memory.extraction import default_extractor
        from memory.home_lock import TurnOwner, acquire_writer

        self.config = config
        self.read_only = bool(read_only)
        self.clock: Clock = clock or SystemClock()
        self.embedder: Embedder = embedder or MiniLMEmbedder()
        self.extractor: Extractor = extractor if extractor is not None else default_extractor()
        self._closed = False
        held: list[Any] = []  # OS locks this object holds: released by close(), by collection or at exit
        self._release = weakref.finalize(self, _release_all, held)  # (and by the OS if the process dies)
        self._owner: TurnOwner | None = None
        try:
            if not self.read_only:
                config.home.mkdir(parents=True, exist_ok=True)
                if config.chroma_url is None:  # embedded Chroma: one writing process per home
                    held.append(acquire_writer(config.home))
                self._owner = TurnOwner(config.home)
                held.append(self._owner)
            self._open(client)
        except BaseException:
            self._release()
            raise
        log.info("opened the memory at %s (%s)", config.home, "read-only" if self.read_only else "writable")

    def _open(self, client: Any) -> None:
        from memory.bm25 import BM25Index
        from memory.chroma_backend import collection_name, make_chroma_client
        from memory.drift import DriftMonitor
        from memory.graph import KnowledgeGraph
        from memory.preferences import FeedbackDriftMonitor
        from memory.retrieval import HybridRetriever
        from memory.stores import EpisodicStore, SemanticStore

        config, timeout = self.config, self.config.busy_timeout_s
        # Two connections: writes run in BEGIN IMMEDIATE transactions on one; reads use the other, so they
        # see committed data only and never wait for this process's write in another thread.
        self._sql = SqliteDb(config.sqlite_path, busy_timeout_s=timeout, read_only=self.read_only)
        self._reads = SqliteDb(config.sqlite_path, busy_timeout_s=timeout, read_only=self.read_only)
        self._log = EpisodeLog(self._reads)
        self._summaries = SummaryLog(self._reads)
        self._feedback = FeedbackLog(self._reads)
        self._versions = UserVersions(self._reads)
        self.graph = KnowledgeGraph(config.sqlite_path, self.clock, busy_timeout_s=timeout, read_only=self.read_only)
        if self.read_only and not self._sql.has_tables(EpisodeLog.TABLE, SummaryLog.TABLE, "fact_events",
                                                       *UserVersions.TABLES):
            raise StoreError(f"the memory at {config.home} was written by an older pllm; open it writable once "
                             "(any pllm command that writes) to upgrade it, then read it read-only")
        self._owns_client = client is None  # close() releases only a client we built
        self._client = None
        if self.read_only and config.chroma_url is None and client is None:
            from memory.readonly import EpisodeView, SummaryView

            self.episodic, self.semantic = EpisodeView(self._log), SummaryView(self._summaries)  # type: ignore[assignment]
        else:
            self._client = client if client is not None else make_chroma_client(config)
            # Ids are unique across users here (uuid ids, the SQLite primary key), so the stores skip their
            # id directory and its extra Chroma write per turn.
            self.episodic = EpisodicStore(self._client, self.embedder, name=collection_name(config, "episodes"),
                                          unique_ids=False)
            self.semantic = SemanticStore(self._client, self.embedder, name=collection_name(config, "semantic"),
                                          unique_ids=False)
        self._journal = None if self.read_only else Journal(config.home / "journal.sqlite", busy_timeout_s=timeout)
        self._write_lock = threading.RLock()
        self._recalls = _RecallBuffer()
        self._asked = _QueryVectors()  # recall's query vectors, reused when remember stores the same message
        self._reply_scores: dict[str, dict[str, float]] = {}  # reply text → its style scores (memory.preferences)
        self.bm25 = BM25Index()
        self.drift = DriftMonitor(self.clock)  # per process by design: style statistics are never persisted
        self.preference_drift = FeedbackDriftMonitor()  # per process too: the ratings are stored, not the detectors
        self.retriever = HybridRetriever(self.episodic, self.semantic, self.graph, self.embedder, self.bm25,
                                         self.clock, config, versions=self._versions.get)
        self.parts = MemoryParts(config=config, clock=self.clock, embedder=self.embedder, sql=self._sql,
                                 episodes=self._log, summaries=self._summaries, feedback=self._feedback,
                                 versions=self._versions,
                                 episodic=self.episodic, semantic=self.semantic, graph=self.graph,
                                 retriever=self.retriever, write_lock=self._write_lock)
        if not self.read_only:
            self._recover()
            if self._summaries.created:
                self._adopt_summaries()

    def _adopt_summaries(self) -> None:
        """A home from before the ``summaries`` table keeps its summaries in Chroma only: copy them in once."""
        users = self.users()
        items = [i for u in users for i in self.semantic.get(u) if i.kind == "summary"]
        if items:
            with self._sql.transaction("copy session summaries into memory.sqlite") as conn:
                self._summaries.put(conn, items)
            log.info("copied %d session summaries of %d users into %s", len(items), len(users), self.config.sqlite_path)

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise ReadOnlyMemory(f"cannot {action}: this Memory of {self.config.home} was opened read-only "
                                 "(read_only=True). Writes go through the process that owns the home; open "
                                 "Memory(config) there, or here once that process has finished.")
        if self._closed:
            raise StoreError(f"cannot {action}: this Memory was closed; open a new one")

    # ----------------------------------------------------------------------------------- writing

    def remember(self, user_id: str, text: str, *, role: Role = "user", session_id: str = "default",
                 at: datetime | None = None, importance: float = 0.5) -> Remembered:
        """Store one turn and update the user's knowledge graph; return the change events.

        Raises ``InvalidInput`` (nothing stored) for bad text, ids, roles or times; ``StoreError`` if a
        backing store fails (the turn is rolled back on both sides); ``ReadOnlyMemory`` if opened read-only.
        """
        self._writable("remember a turn")
        user_id = check_user_id(user_id)
        session_id = check_user_id(session_id, name="session_id")
        text = clean_text(text)
        if at is not None and not isinstance(at, datetime):
            raise InvalidInput(f"at must be a datetime, got {type(at).__name__}")
        now = self.clock.now()
        try:
            episode = Episode(user_id=user_id, session_id=session_id, role=role, text=text,
                              at=to_utc(at) if at else now, recorded_at=now, importance=importance)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(str(exc)) from exc
        candidates = self.extractor.extract(text, role=role) if role == "user" else []
        asked = self._asked.take(user_id, text) if role == "user" else None
        with self._write_lock:
            events, version = self._commit_turn(episode, candidates, asked)
        self.retriever.advance(user_id, *version)
        self.flush_recalls(user_id)
        self.retriever.index([episode])
        if role == "user":
            events = events + list(self.drift.observe(user_id, text))
        self._enforce_cap(user_id)
        return Remembered(episode=episode, events=tuple(events))

    def _commit_turn(self, episode: Episode, candidates: Sequence[Any], asked: "np.ndarray | None" = None,
                     ) -> tuple[list[ChangeEvent], tuple[int, int]]:
        """One ``BEGIN IMMEDIATE`` transaction: the episode row, the graph events (planned against the log
        as this transaction sees it) and the user's write stamp, around the Chroma writes. ``asked``: the
        episode's vector when :meth:`recall` already embedded the same text as its query."""
        intent: Intent | None = None
        journal = self._journal
        assert journal is not None  # writable
        try:
            with self._sql.transaction("store the turn") as conn:
                self._log.insert(conn, [episode])
                events = self.graph.apply(episode.user_id, candidates, episode_id=episode.id, at=episode.at,
                                          conn=conn) if candidates else []
                version = self._versions.bump(conn, episode.user_id)
                items, superseded = semantic_changes(events)
                # One forward pass for the turn and its new facts: (1 + len(items), dim). Embedding dominates a
                # turn's cost, and a second call for the facts nearly doubled it. A message the agent recalled
                # for is not embedded again: its query vector is the episode's.
                if asked is None:
                    vectors = self.embedder.embed([episode.text] + [i.text for i in items])
                elif items:
                    vectors = np.concatenate([asked[None], self.embedder.embed([i.text for i in items])])
                else:
                    vectors = asked[None]
                intent = Intent(episode.id, episode.user_id, (episode.id,), tuple(i.id for i in items), tuple(superseded),
                                self._owner.id if self._owner else None)
                journal.begin(intent)
                self.episodic.add([episode], vectors[:1])
                if items:
                    self.semantic.add(items, vectors[1:])
                if superseded:
                    self.semantic.mark_superseded(episode.user_id, superseded)
        except BaseException as exc:
            self.graph.invalidate(episode.user_id)
            if intent is not None:
                self._undo(intent)
                journal.done(intent.turn_id)
            if isinstance(exc, PllmMemoryError) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"storing the turn failed and was rolled back: {exc}") from exc
        journal.done(intent.turn_id)
        return events, version

    def _undo(self, intent: Intent) -> None:
        """Remove what an uncommitted turn may have written to Chroma (idempotent)."""
        try:
            self.episodic.delete(intent.user_id, list(intent.episode_ids))
            self.semantic.delete(intent.user_id, list(intent.item_ids))
            if intent.superseded_fact_ids:
                self.semantic.mark_current(intent.user_id, list(intent.superseded_fact_ids))
        except PllmMemoryError:
            log.exception("could not undo turn %s in Chroma; it stays in the journal", intent.turn_id)
            raise

    def _redo(self, intent: Intent) -> None:
        """Re-apply a committed turn's Chroma writes from the SQLite truth (idempotent upserts)."""
        episodes = self._log.get(intent.user_id, intent.episode_ids)
        if episodes:
            self.episodic.add(episodes, self.embedder.embed([e.text for e in episodes]))
        facts = [self.graph.get(intent.user_id, i.removeprefix("mi_")) for i in intent.item_ids]
        items = [fact_item(f) for f in facts if f is not None]
        if items:
            self.semantic.add(items, self.embedder.embed([i.text for i in items]))
        if intent.superseded_fact_ids:
            self.semantic.mark_superseded(intent.user_id, list(intent.superseded_fact_ids))

    def _recover(self) -> None:
        """Finish or roll back turns that a crash interrupted (see :mod:`memory.journal`); turns of writers
        that still run (another process on a Chroma server, another Memory here) are theirs to finish."""
        from memory.home_lock import owner_alive

        assert self._journal is not None  # writable
        for intent in self._journal.pending():
            if intent.owner is not None and owner_alive(self.config.home, intent.owner):
                continue
            committed = self._log.exists(intent.turn_id)
            log.warning("recovering interrupted turn %s of %s (%s)", intent.turn_id, intent.user_id,
                        "redo" if committed else "undo")
            (self._redo if committed else self._undo)(intent)
            self._journal.done(intent.turn_id)

    # ----------------------------------------------------------------------------------- reading

    def recall(self, user_id: str, query: str, *, k: int | None = None, k_facts: int | None = None,
               include_superseded: bool = False, as_of: datetime | None = None) -> "Recollection":
        """What a prompt needs for ``query``: the profile, relevant facts/preferences and episodes."""
        user_id = check_user_id(user_id)
        query = clean_text(query, name="query")
        vector = self.embedder.embed([query])[0]
        rec = self.retriever.retrieve(user_id, query, k_episodes=k or self.config.recall_k,
                                      k_facts=k_facts or self.config.fact_k,
                                      include_superseded=include_superseded, as_of=as_of, query_vector=vector)
        # The agent recalls for the user's message, then remembers that message: its vector is kept for that.
        self._asked.put(user_id, query, vector)
        # Each recall makes a memory more stable (the forgetting curve flattens with rehearsal); the write
        # is deferred (see the module docstring): a Chroma write cost 25-70 ms of each recall. A read-only
        # Memory only looks: its recalls are not rehearsals of the writer's memory.
        if not self.read_only:
            self._recalls.add(user_id, rec.episode_ids, to_utc(self.clock.now()).timestamp())
        return rec

    def flush_recalls(self, user_id: str | None = None) -> int:
        """Write the pending recall statistics of ``user_id`` (None: every user) to the episodic store,
        one ``update_metadata`` call per user; returns how many episodes were updated.

        Episodes deleted meanwhile are skipped. If the store fails, the counts stay pending (logged) and
        the next flush retries them.
        """
        users = [check_user_id(user_id)] if user_id is not None else self._recalls.users()
        return sum(self._flush_user(u) for u in users)

    def _flush_user(self, user_id: str) -> int:
        pending = self._recalls.take(user_id)
        if not pending:
            return 0
        try:
            current = self.episodic.metadata(user_id, list(pending))
            updates = {i: {"recall_count": int(m.get("recall_count", 0)) + pending[i][0],
                           "last_recalled": max(float(m.get("last_recalled", 0.0)), pending[i][1])}
                       for i, m in current.items()}
            self.episodic.update_metadata(user_id, updates)
        except PllmMemoryError:
            log.warning("could not write recall statistics of %s; they stay pending", user_id, exc_info=True)
            self._recalls.restore(user_id, pending)
            return 0
        return len(updates)

    def profile(self, user_id: str) -> list[Fact]:
        """The user's current facts and preferences."""
        return self.graph.facts(check_user_id(user_id))

    def facts(self, user_id: str, *, as_of: datetime | None = None, include_superseded: bool = False,
              **filters: Any) -> list[Fact]:
        """Facts of the user's graph, as of now by default (see ``KnowledgeGraph.facts``)."""
        return self.graph.facts(check_user_id(user_id), as_of=as_of, include_superseded=include_superseded, **filters)

    def history(self, user_id: str, subject: str, relation: str, *, category: str | None = None) -> list["HistoryEntry"]:
        """The timeline of one slot, each change with its evidence episode."""
        return self.graph.history(check_user_id(user_id), subject, relation, category=category)

    def episodes(self, user_id: str, *, session_id: str | None = None) -> list[Episode]:
        """The user's stored episodes, oldest first (from the SQLite record of truth)."""
        if session_id is not None:
            session_id = check_user_id(session_id, name="session_id")
        return self._log.of_user(check_user_id(user_id), session_id=session_id)

    def rate(self, user_id: str, episode_id: str, value: int, *, at: datetime | None = None) -> Rated:
        """Record the user's rating of one of the assistant's stored replies: ``1`` liked, ``-1`` disliked.

        Ratings keep their history (a new rating of the same reply is added; the newest counts, see
        :func:`memory.feedback.current_ratings`). When the rating turns a style weight to the other pole
        (:meth:`preference_weights`), or the ``river`` detector over that dimension's per-rating signal fires
        (:class:`memory.preferences.FeedbackDriftMonitor`), the result carries
        ``PreferenceDrift(dimension, before, after, (reply,))`` with the weights before and after. Raises ``InvalidInput`` (nothing stored) when the value is not 1
        or -1, or ``episode_id`` is not an assistant reply stored for this user.
        """
        self._writable("rate a reply")
        user_id = check_user_id(user_id)
        if not isinstance(episode_id, str) or not episode_id.strip():
            raise InvalidInput(f"episode_id must be the id of a stored assistant reply, got {episode_id!r}")
        if at is not None and not isinstance(at, datetime):
            raise InvalidInput(f"at must be a datetime, got {type(at).__name__}")
        found = self._log.get(user_id, [episode_id])
        if not found:
            raise InvalidInput(f"user {user_id!r} has no stored episode {episode_id!r}: rate a reply by the id "
                               "its turn returned (TurnResult.reply_id) or one listed by Memory.episodes()")
        if found[0].role != "assistant":
            raise InvalidInput(f"episode {episode_id!r} is a {found[0].role} turn; only the assistant's replies "
                               "are rated")
        now = self.clock.now()
        try:
            rating = Feedback(user_id=user_id, episode_id=episode_id, value=value,
                              at=to_utc(at) if at else now, recorded_at=now)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(str(exc)) from exc
        from memory.preferences import preference_weights, rating_signals

        # Read once: the weights before and after differ only by this rating.
        facts, replies, ratings = self.facts(user_id), self.episodes(user_id), self.feedback(user_id)
        before = preference_weights(facts, replies, ratings, scores=self._scores)
        signals = rating_signals(rating, replies, ratings, scores=self._scores)
        with self._write_lock, self._sql.transaction("store the rating") as conn:
            self._feedback.insert(conn, [rating])
        after = preference_weights(facts, replies, [*ratings, rating], scores=self._scores)
        fired = set(self.preference_drift.observe(user_id, signals))
        events = tuple(PreferenceDrift(d, before[d].weight, w.weight, (episode_id,)) for d, w in after.items()
                       if d in fired or (w.pole is not None and w.pole != before[d].pole))
        return Rated(rating, events)

    def feedback(self, user_id: str) -> list[Feedback]:
        """Every rating the user gave, oldest first (re-ratings included)."""
        return self._feedback.of_user(check_user_id(user_id))

    def preference_weights(self, user_id: str, *, as_of: datetime | None = None) -> dict[str, "PreferenceWeight"]:
        """The user's style weights per dimension, in [-1, 1], from their statements and their ratings of replies
        (see :mod:`memory.preferences`); ``as_of``: as they stood then. Reply scores are cached by text."""
        from memory.preferences import preference_weights

        user_id = check_user_id(user_id)
        return preference_weights(self.facts(user_id, as_of=as_of), self.episodes(user_id), self.feedback(user_id),
                                  scores=self._scores, as_of=as_of)

    def _scores(self, text: str) -> dict[str, float]:
        """A reply's style scores, cached by text (scoring parses it with spaCy)."""
        from memory.preferences import reply_scores

        cache = self._reply_scores
        if text not in cache:
            if len(cache) > 10_000:
                cache.clear()
            cache[text] = reply_scores(text)
        return cache[text]

    def indexed_count(self, user_id: str) -> int:
        """How many of the user's episodes are in the search index (what the cap limits)."""
        return self._log.indexed_count(check_user_id(user_id))

    def users(self) -> list[str]:
        return sorted(self._log.users() | set(self.graph.users()))

    def has_user(self, user_id: str) -> bool:
        return user_id in self.users()

    # ------------------------------------------------------------------------- consolidation

    def _enforce_cap(self, user_id: str) -> None:
        from memory.consolidation import enforce_cap

        self.flush_recalls(user_id)  # eviction ranks by recall statistics
        enforce_cap(self.parts, user_id)

    def consolidate(self, user_id: str, *, older_than_days: float = 7.0) -> Any:
        """Summarize old sessions into the semantic store and apply the episode cap."""
        from memory.consolidation import consolidate

        self._writable("consolidate")
        user_id = check_user_id(user_id)
        self.flush_recalls(user_id)  # eviction ranks by recall statistics
        return consolidate(self.parts, user_id, older_than_days=older_than_days)

    # -------------------------------------------------------------------------------- privacy

    def export(self, user_id: str) -> dict[str, Any]:
        """Everything stored about ``user_id`` as one JSON-ready document (see :mod:`memory.portability`)."""
        from memory.portability import export_user

        user_id = check_user_id(user_id)
        self.flush_recalls(user_id)
        return export_user(self.parts, user_id)

    def import_(self, document: dict[str, Any], *, user_id: str | None = None) -> int:
        """Load an ``export`` document, as its own user or (``user_id``) under another id in this home;
        returns the number of episodes imported. Everything is checked first: a bad document raises
        ``InvalidInput`` naming the record and writes nothing (see :mod:`memory.portability`)."""
        from memory.portability import import_user

        self._writable("import")
        return import_user(self.parts, document, user_id=user_id)

    def forget(self, user_id: str) -> dict[str, int]:
        """Remove everything stored about ``user_id`` (a no-op returning zeros for an unknown user).

        Each store drops the user's whole Chroma collection; with an embedded Chroma its files are then
        scrubbed (see :meth:`_scrub_chroma`), so no text, vector or id of the user stays on disk.
        """
        self._writable("forget a user")
        user_id = check_user_id(user_id)
        assert self._journal is not None  # writable
        with self._write_lock:
            self._recalls.take(user_id)  # pending recall statistics of records about to go
            collections = [c for c in (self.episodic.collection_id(user_id), self.semantic.collection_id(user_id))
                           if c is not None]
            segments = _segment_dirs(self._client, collections)
            removed = {"episodes_index": self.episodic.delete_user(user_id),
                       "semantic_items": self.semantic.delete_user(user_id)}
            removed["chroma_files_scrubbed"] = self._scrub_chroma(segments) if collections else 0
            with self._sql.transaction("forget the user") as conn:
                removed["episodes"] = self._log.delete_user(conn, user_id)
                self._summaries.delete_user(conn, user_id)
                removed["feedback"] = self._feedback.delete_user(conn, user_id)
                removed["graph_events"] = self.graph.forget(user_id, conn=conn)
                self._versions.drop(conn, user_id)
            self._journal.forget(user_id)
            self.retriever.drop_user(user_id)
            self.drift.reset(user_id)
            self.preference_drift.reset(user_id)
            self._sql.checkpoint()  # no copy of the deleted rows left in the WAL
        return removed

    def _scrub_chroma(self, segment_dirs: list[Path]) -> int:
        """After the user's collections were deleted, remove what an embedded Chroma still keeps of them
        on disk; returns how many segment folders were removed.

        ``delete_collection`` (chromadb 1.5.9, checked on the files) deletes the collection's rows — its
        write-ahead log (``embeddings_queue``), records, metadata and full-text rows — but the text stays
        in free SQLite pages (Chroma does not set ``secure_delete``) and in the FTS5 trigram index's
        segments (an ``optimize`` merge still left some), and the collection's HNSW folder (vectors and
        ids) stays behind. Here: the FTS index is rebuilt from its live rows, the file is ``VACUUM``-ed and
        the deleted collections' segment folders are removed. The FTS table is Chroma's own
        (``embedding_fulltext_search``), a private detail checked on 1.5.9. Server mode (``chroma_url``):
        the server owns its files and nothing is scrubbed here.
        """
        path = _persist_path(self._client)
        if path is None or not (path / "chroma.sqlite3").exists():
            return 0
        try:
            db = sqlite3.connect(str(path / "chroma.sqlite3"), isolation_level=None, timeout=60)
            try:
                db.execute("INSERT INTO embedding_fulltext_search(embedding_fulltext_search) VALUES ('rebuild')")
                db.execute("VACUUM")
            finally:
                db.close()
        except sqlite3.Error as exc:  # the deletes stand; only the on-disk scrub failed
            raise StoreError(f"the user's collections were deleted from Chroma, but scrubbing Chroma's files at "
                             f"{path} failed ({exc}); run forget() again when no other process uses them") from exc
        removed = 0
        for folder in segment_dirs:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def close(self) -> None:
        """Write pending recall statistics, close the SQLite connections, release the Chroma client if this
        object built it, and let go of the home's writer lock. A second call does nothing."""
        if self._closed:
            return
        try:
            self.flush_recalls()
        finally:
            self._closed = True
            self.graph.close()
            if self._journal is not None:
                self._journal.close()
            self._sql.close()
            self._reads.close()
            if self._owns_client and self._client is not None and hasattr(self._client, "close"):
                self._client.close()
            self._release()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ helpers


def _persist_path(client: Any) -> Path | None:
    """The folder of an embedded (persistent) Chroma client; None for a server or in-memory client."""
    try:
        settings = client.get_settings()
    except Exception:  # noqa: BLE001 - a client without settings is not an embedded one we can scrub
        return None
    embedded = "rust" in str(getattr(settings, "chroma_api_impl", "")).lower()  # HttpClient: FastAPI
    if not embedded or not getattr(settings, "is_persistent", False) or not getattr(settings, "persist_directory", None):
        return None
    return Path(settings.persist_directory)


def _segment_dirs(client: Any, collection_ids: Sequence[str]) -> list[Path]:
    """The on-disk segment folders of an embedded Chroma's collections (read before they are deleted).

    Reads Chroma's private ``segments`` table (chromadb 1.5.9: ``id, scope, collection``; a segment's
    folder is named by its id). Anything unexpected → ``[]``: forget still deletes, only leaves folders.
    """
    path = _persist_path(client)
    if path is None or not collection_ids or not (path / "chroma.sqlite3").exists():
        return []
    marks = ",".join("?" * len(collection_ids))
    try:
        db = sqlite3.connect(f"file:{path / 'chroma.sqlite3'}?mode=ro", uri=True, timeout=60)
        try:
            rows = db.execute(f"SELECT id FROM segments WHERE collection IN ({marks})", list(collection_ids)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        log.warning("could not read Chroma's segment table at %s; segment folders stay on disk", path, exc_info=True)
        return []
    folders = [path / str(r[0]) for r in rows]
    return [f for f in folders if f.parent == path and _UUID_RE.fullmatch(f.name)]


class _QueryVectors:
    """The latest recall queries' vectors, per ``(user, text)`` and at most ``size`` of them (oldest dropped): a
    message that :meth:`Memory.recall` embedded as its query is not embedded again when it is remembered."""

    def __init__(self, size: int = 256) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def put(self, user_id: str, text: str, vector: np.ndarray) -> None:
        with self._lock:
            self._vectors[(user_id, text)] = vector
            self._vectors.move_to_end((user_id, text))
            while len(self._vectors) > self._size:
                self._vectors.popitem(last=False)

    def take(self, user_id: str, text: str) -> np.ndarray | None:
        with self._lock:
            return self._vectors.pop((user_id, text), None)


class _RecallBuffer:
    """Pending recall statistics per user: episode id → (recalls not yet written, latest recall time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, tuple[int, float]]] = {}

    def add(self, user_id: str, episode_ids: Sequence[str], at: float) -> None:
        """Count one recall of each of ``episode_ids`` at ``at`` (epoch seconds)."""
        if not episode_ids:
            return
        with self._lock:
            user = self._pending.setdefault(user_id, {})
            for i in dict.fromkeys(episode_ids):
                count, last = user.get(i, (0, at))
                user[i] = (count + 1, max(last, at))

    def take(self, user_id: str) -> dict[str, tuple[int, float]]:
        """Remove and return the user's pending statistics."""
        with self._lock:
            return self._pending.pop(user_id, {})

    def restore(self, user_id: str, pending: dict[str, tuple[int, float]]) -> None:
        """Put back statistics that could not be written (merged with any that arrived meanwhile)."""
        with self._lock:
            user = self._pending.setdefault(user_id, {})
            for i, (count, last) in pending.items():
                now_count, now_last = user.get(i, (0, last))
                user[i] = (count + now_count, max(last, now_last))

    def users(self) -> list[str]:
        with self._lock:
            return list(self._pending)


def _release_all(held: list[Any]) -> None:
    for lock in reversed(held):
        lock.release()
