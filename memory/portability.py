"""Export and import of one user's memory as a single JSON document.

The document holds the record of truth: every episode (with times and ids), the full graph event log
(so fact history survives the round trip exactly), session summaries and the user's ratings of replies. Vectors are not exported;
they are recomputed on import with the embedder in use.

An import is checked whole before anything is written (:mod:`memory.export_format`); it then writes
the episodes, the graph log, the summaries and the user's write stamp in one SQLite transaction around
the Chroma writes, so a failure at any point leaves the home as it was — the target user still absent.
It goes into a user with no memories only (forget first), as the document's user or, with ``user_id=``,
under a new id beside the original in the same home. Ids are kept when they are free (an export,
``forget``, import round trip is exact) and renamed otherwise — under a new user id, or when the home
already holds them (see :mod:`memory.export_format`).
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from memory.errors import InvalidInput, UnknownUser
from memory.export_format import EXPORT_FORMAT, EXPORT_VERSION, ImportPlan, read_export
from memory.parts import MemoryParts, fact_item
from memory.records import record_to_dict

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "export_user", "import_user"]

log = logging.getLogger(__name__)


def _pllm_version() -> str:
    try:
        return metadata.version("pllm")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_user(parts: MemoryParts, user_id: str) -> dict[str, Any]:
    """Everything stored about ``user_id``; raises ``UnknownUser`` when nothing is."""
    episodes = parts.episodes.of_user(user_id)
    events = parts.graph.events(user_id)
    if not episodes and not events:
        raise UnknownUser(f"no memories are stored for user {user_id!r}; nothing to export")
    indexed = parts.episodes.indexed_ids(user_id)
    summaries = parts.summaries.of_user(user_id)
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "pllm_version": _pllm_version(),
        "user_id": user_id,
        "exported_at": parts.clock.now().isoformat(),
        "episodes": [{**record_to_dict(e), "in_index": e.id in indexed} for e in episodes],
        "graph_events": [record_to_dict(ev) for ev in events],
        "summaries": [record_to_dict(s) for s in summaries],
        "feedback": [record_to_dict(f) for f in parts.feedback.of_user(user_id)],
        "current_facts": [record_to_dict(f) for f in parts.graph.facts(user_id)],  # informational
    }


def import_user(parts: MemoryParts, document: Any, *, user_id: str | None = None) -> int:
    """Load an export into a user without memories; returns the number of episodes imported.

    ``user_id``: import under this id instead of the document's (ids are renamed, so the original user
    may live in the same home). Raises ``InvalidInput`` (nothing written) for a bad document or a target
    user who already has memories.
    """
    from memory.graph_state import replay

    plan = read_export(document, user_id=user_id)
    if not plan.renamed and _taken(parts, plan):  # e.g. a copy of a user of this home, renamed in the file
        log.info("the export's ids are taken in this home; importing %s with fresh ids", plan.user_id)
        plan = read_export(document, user_id=user_id, rename=True)
    target = plan.user_id
    facts = replay(target, (e.fact for e in plan.events)).facts.values()
    items = [fact_item(f) for f in facts] + plan.summaries
    indexed = [e for e, flag in zip(plan.episodes, plan.indexed) if flag]
    # (n, dim) each, computed before the write lock is taken: embedding is the slow part.
    episode_vectors = parts.embedder.embed([e.text for e in indexed]) if indexed else None
    item_vectors = parts.embedder.embed([i.text for i in items]) if items else None
    with parts.write_lock:
        _check_home(parts, plan)
        wrote_chroma = False
        try:
            with parts.sql.transaction(f"import user {target!r}") as conn:
                parts.episodes.insert(conn, plan.episodes, indexed=plan.indexed)
                parts.graph.import_events(target, plan.events, conn=conn)  # checks the user again, in the transaction
                parts.summaries.put(conn, plan.summaries)
                parts.feedback.insert(conn, plan.feedback)
                parts.versions.bump(conn, target)
                wrote_chroma = True
                if indexed:
                    parts.episodic.add(indexed, episode_vectors)
                if items:
                    parts.semantic.add(items, item_vectors)
        except BaseException:
            parts.graph.invalidate(target)
            if wrote_chroma:  # the user had nothing in Chroma (checked above): what is there now is this import's
                parts.episodic.delete_user(target)
                parts.semantic.delete_user(target)
            raise
    parts.retriever.drop_user(target)  # rebuilt from the store on the next recall
    log.info("imported %d episodes and %d graph events for %s", len(plan.episodes), len(plan.events), target)
    return len(plan.episodes)


def _check_home(parts: MemoryParts, plan: ImportPlan) -> None:
    """The target user has nothing in this home, and no id of the plan is taken by anyone else."""
    target = plan.user_id
    if (parts.episodes.has_user(target) or parts.graph.events(target) or parts.episodic.count(target)
            or parts.semantic.count(target)):
        raise InvalidInput(f"user {target!r} already has memories; forget them first, import into a fresh home, "
                           "or import under another id (user_id=...)")
    taken = _taken(parts, plan)
    if taken:  # fresh ids never collide; this is a concurrent import of the same document
        raise InvalidInput(f"{len(taken)} record id(s) of this export were stored meanwhile (e.g. {sorted(taken)[0]!r}); "
                           "nothing was imported, retry")


def _taken(parts: MemoryParts, plan: ImportPlan) -> set[str]:
    """Ids of the plan that the home's primary keys already hold (episodes, summaries)."""
    return (parts.episodes.existing([e.id for e in plan.episodes])
            | parts.summaries.existing([s.id for s in plan.summaries])
            | parts.feedback.existing([f.id for f in plan.feedback]))
