"""Export and import of one user's memory as a single JSON document.

The document holds the record of truth: every episode (with times and ids), the full graph event log
(so fact history survives the round trip exactly) and session summaries. Vectors are not exported;
they are recomputed on import with the embedder in use.
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

from memory.errors import InvalidInput, UnknownUser
from memory.records import Episode, record_to_dict

if TYPE_CHECKING:  # pragma: no cover
    from memory.service import Memory

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "export_user", "import_user"]

log = logging.getLogger(__name__)

EXPORT_FORMAT = "pllm.memory.export"
EXPORT_VERSION = 1


def _pllm_version() -> str:
    try:
        return metadata.version("pllm")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_user(mem: "Memory", user_id: str) -> dict[str, Any]:
    """Everything stored about ``user_id``; raises ``UnknownUser`` when nothing is."""
    episodes = mem.episodes(user_id)
    events = mem.graph.events(user_id)
    if not episodes and not events:
        raise UnknownUser(f"no memories are stored for user {user_id!r}; nothing to export")
    indexed = set(mem.episodic.ids(user_id))
    summaries = [i for i in mem.semantic.get(user_id) if i.kind == "summary"]
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "pllm_version": _pllm_version(),
        "user_id": user_id,
        "exported_at": mem.clock.now().isoformat(),
        "episodes": [{**record_to_dict(e), "in_index": e.id in indexed} for e in episodes],
        "graph_events": [record_to_dict(ev) for ev in events],
        "summaries": [record_to_dict(s) for s in summaries],
        "current_facts": [record_to_dict(f) for f in mem.graph.facts(user_id)],  # informational
    }


def _check_document(document: Any) -> None:
    if not isinstance(document, dict):
        raise InvalidInput(f"an export document is a JSON object, got {type(document).__name__}")
    if document.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"not a pllm memory export (format {document.get('format')!r}, expected {EXPORT_FORMAT!r})")
    if document.get("version") != EXPORT_VERSION:
        raise InvalidInput(f"export version {document.get('version')!r} is not supported (this pllm reads {EXPORT_VERSION})")
    for key in ("user_id", "episodes", "graph_events"):
        if key not in document:
            raise InvalidInput(f"the export document has no {key!r}")


def _episode(d: dict[str, Any]) -> Episode:
    try:
        return Episode(id=d["id"], user_id=d["user_id"], session_id=d["session_id"], role=d["role"], text=d["text"],
                       at=datetime.fromisoformat(d["at"]), recorded_at=datetime.fromisoformat(d["recorded_at"]),
                       importance=float(d.get("importance", 0.5)))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"bad episode in export ({exc}): {str(d)[:200]}") from exc


def import_user(mem: "Memory", document: dict[str, Any], *, user_id: str | None = None) -> int:
    """Load an export into an empty user; returns the number of episodes imported.

    Everything is validated before anything is written; a user who already has memories is refused
    (forget them first), so an import never mixes two histories.
    """
    from memory.graph import GraphEvent
    from memory.service import _episode_row, _item_for
    from memory.stores import MemoryItem

    _check_document(document)
    source_user = document["user_id"]
    if user_id is not None and user_id != source_user:
        raise InvalidInput("importing under another user id is not supported yet; import as "
                           f"{source_user!r} (the ids inside the export belong to that user)")
    user_id = source_user
    if mem.episodes(user_id) or mem.graph.events(user_id):
        raise InvalidInput(f"user {user_id!r} already has memories; forget them first or import into a fresh home")
    episodes = [_episode(d) for d in document["episodes"]]
    if any(e.user_id != user_id for e in episodes):
        raise InvalidInput("the export mixes users: every episode must belong to its user_id")
    in_index = {d["id"] for d in document["episodes"] if d.get("in_index", True)}
    events = [GraphEvent.from_dict(d) for d in document["graph_events"]]
    summaries = [MemoryItem(id=s["id"], user_id=user_id, kind="summary", text=s["text"],
                            at=datetime.fromisoformat(s["at"]), source_episode_ids=tuple(s.get("source_episode_ids", ())))
                 for s in document.get("summaries", [])]
    with mem._write_lock:
        mem.graph.import_events(user_id, events)
        mem._db.execute("BEGIN IMMEDIATE")
        try:
            mem._db.executemany("INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(*_episode_row(e), int(e.id in in_index)) for e in episodes])
            indexed = [e for e in episodes if e.id in in_index]
            if indexed:
                mem.episodic.add(indexed, mem.embedder.embed([e.text for e in indexed]))
            items = [_item_for(f) for f in mem.graph.facts(user_id, include_superseded=True)] + summaries
            if items:
                mem.semantic.add(items, mem.embedder.embed([i.text for i in items]))
            mem._db.execute("COMMIT")
        except BaseException:
            mem._db.execute("ROLLBACK")
            mem.episodic.delete_user(user_id)
            mem.semantic.delete_user(user_id)
            mem.graph.forget(user_id)
            raise
    mem.retriever.drop_user(user_id)  # rebuilt from the store on the next recall
    log.info("imported %d episodes and %d graph events for %s", len(episodes), len(events), user_id)
    return len(episodes)
