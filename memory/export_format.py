"""The export document, read and checked record by record before an import writes anything.

:func:`read_export` turns a JSON-ready document (``Memory.export`` output, maybe edited, maybe hostile)
into typed records or raises :class:`InvalidInput` naming the record (its list, index and id) and what is
wrong with it. Every record passes the same checks as live input: ids as ``check_user_id``, texts as
``clean_text`` (what ``remember`` refuses is refused, what it cleans is cleaned), roles, ISO times,
importance, facts as ``Fact`` validates them; every record must belong to the document's user; ids are
unique; the graph events must replay to at most one current fact per slot.

Importing under another id (``user_id=``), or with ``rename=True``, gives fresh ids to what must be
unique in a home: episode ids (the SQLite primary key), fact ids (and so their semantic items), summary
ids, rating ids; references follow (graph events' ``episode_id`` and ``superseded_by``, facts' and summaries'
``source_episode_ids``, ratings' ``episode_id``, which must name an assistant reply of the document), and the user's own facts get the new id as subject.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memory.consolidation import summary_id
from memory.errors import InvalidInput
from memory.feedback import Feedback
from memory.records import Episode, Fact, new_id
from memory.validation import check_user_id, clean_text

if TYPE_CHECKING:  # pragma: no cover
    from memory.graph import GraphEvent
    from memory.stores import MemoryItem

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "ImportPlan", "read_export"]

EXPORT_FORMAT = "pllm.memory.export"
EXPORT_VERSION = 1
_ROLES = ("user", "assistant", "system", "summary")
_REPLAYABLE = ("assert", "supersede", "retract")
_EPISODE_KEYS = ("id", "user_id", "session_id", "role", "text", "at", "recorded_at")
_EVENT_KEYS = ("seq", "user_id", "op", "fact", "at", "recorded_at")
_FEEDBACK_KEYS = ("id", "user_id", "episode_id", "value", "at", "recorded_at")
_FACT_KEYS = ("id", "user_id", "subject", "relation", "object", "valid_from", "recorded_at")


@dataclass(frozen=True)
class ImportPlan:
    """What an import will write, every record checked and already under the target user's ids."""

    source_user: str
    user_id: str
    renamed: bool  # ids are fresh, not the document's
    episodes: list[Episode]
    indexed: list[bool]  # per episode: in the search index (False: kept only as evidence of a fact)
    events: list["GraphEvent"]
    summaries: list["MemoryItem"]
    feedback: list[Feedback] = field(default_factory=list)


def read_export(document: Any, *, user_id: str | None = None, rename: bool = False) -> ImportPlan:
    """Check ``document`` and build the plan of its import as ``user_id`` (default: its own user), with
    fresh ids when the user changes or ``rename``."""
    _check_header(document)
    with _where("the document's user_id"):
        source = check_user_id(document["user_id"])
    with _where("user_id"):
        target = check_user_id(user_id) if user_id is not None else source
    ids = _Renamer(source, target, rename=rename or source != target)
    raw_episodes = _records(document, "episodes")
    sessions = {d.get("session_id") for d in raw_episodes if isinstance(d, dict)}
    session_of = {summary_id(source, s): s for s in sessions if isinstance(s, str)}  # summary id → its session
    episodes = [_episode(i, d, ids) for i, d in enumerate(raw_episodes)]
    _unique("episode", [e.id for e, _ in episodes])
    events = [_event(i, d, ids) for i, d in enumerate(_records(document, "graph_events"))]
    _check_replay(target, events)
    summaries = [_summary(i, d, ids, session_of) for i, d in enumerate(_records(document, "summaries", optional=True))]
    _unique("summary", [s.id for s in summaries])
    replies = {e.id for e, _ in episodes if e.role == "assistant"}
    feedback = [_rating(i, d, ids, replies) for i, d in enumerate(_records(document, "feedback", optional=True))]
    _unique("feedback", [f.id for f in feedback])
    return ImportPlan(source, target, ids.rename, [e for e, _ in episodes], [flag for _, flag in episodes], events,
                      summaries, feedback)


# ----------------------------------------------------------------------------------------- structure


@contextlib.contextmanager
def _where(where: str) -> Iterator[None]:
    """Prefix any validation error raised inside with the record it is about."""
    try:
        yield
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{where}: {exc}") from exc


def _check_header(document: Any) -> None:
    if not isinstance(document, dict):
        raise InvalidInput(f"an export document is a JSON object, got {type(document).__name__}")
    if document.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"not a pllm memory export (format {document.get('format')!r}, expected {EXPORT_FORMAT!r})")
    if document.get("version") != EXPORT_VERSION:
        raise InvalidInput(f"export version {document.get('version')!r} is not supported (this pllm reads {EXPORT_VERSION})")
    for key in ("user_id", "episodes", "graph_events"):
        if key not in document:
            raise InvalidInput(f"the export document has no {key!r}")


def _records(document: dict[str, Any], key: str, *, optional: bool = False) -> list[Any]:
    value = document.get(key, [] if optional else None)
    if not isinstance(value, list):
        raise InvalidInput(f"the export's {key!r} must be a list, got {type(value).__name__}")
    return value


def _fields(where: str, d: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    if missing:
        raise InvalidInput(f"{where} lacks {', '.join(map(repr, missing))}")
    return d


def _unique(kind: str, ids: list[str]) -> None:
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        raise InvalidInput(f"{len(twice)} {kind} id(s) appear more than once in the export (e.g. {twice[0]!r}); "
                           f"each {kind} must be listed once")


def _owner(where: str, d: dict[str, Any], ids: "_Renamer") -> None:
    if d.get("user_id") != ids.source:
        raise InvalidInput(f"{where} belongs to user {d.get('user_id')!r}, not to the document's user "
                           f"{ids.source!r}; an export holds one user's records only")


# ----------------------------------------------------------------------------------------- values


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be an ISO-8601 time string, got {type(value).__name__}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} {value[:40]!r} is not an ISO-8601 time") from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{name} must be a number within [0, 1], got {value!r}")
    return float(value)


def _id_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidInput(f"{name} must be a list of ids, got {type(value).__name__}")
    return [check_user_id(v, name=f"an id in {name}") for v in value]


def _optional_id(value: Any, name: str) -> str | None:
    return None if value is None else check_user_id(value, name=name)


class _Renamer:
    """Old id → id in the target home: the same id when importing as the same user, else fresh ones
    (the same fresh id every time one old id is met)."""

    def __init__(self, source: str, target: str, *, rename: bool) -> None:
        self.source, self.target, self.rename = source, target, rename
        self._map: dict[tuple[str, str], str] = {}

    def __call__(self, kind: str, old: str, fresh: str | None = None) -> str:
        if not self.rename:
            return old
        return self._map.setdefault((kind, old), fresh or new_id(kind))

    def subject(self, subject: str) -> str:
        return self.target if subject == self.source else subject


# ----------------------------------------------------------------------------------------- records


def _owned_record(kind: str, index: int, raw: Any, keys: tuple[str, ...], ids: _Renamer) -> tuple[dict[str, Any], str, str]:
    """(fields, its old id, where) of a record with an ``id`` that must belong to the document's user."""
    d = _fields(f"{kind} #{index}", raw, keys)
    with _where(f"{kind} #{index}"):
        old = check_user_id(d["id"], name="id")
    where = f"{kind} #{index} ({old!r})"
    _owner(where, d, ids)
    return d, old, where


def _episode(index: int, raw: Any, ids: _Renamer) -> tuple[Episode, bool]:
    d, old, where = _owned_record("episode", index, raw, _EPISODE_KEYS, ids)
    with _where(where):
        if d["role"] not in _ROLES:
            raise InvalidInput(f"role must be one of {_ROLES}, got {d['role']!r}")
        indexed = d.get("in_index", True)
        if not isinstance(indexed, bool):
            raise InvalidInput(f"in_index must be true or false, got {indexed!r}")
        episode = Episode(id=ids("ep", old), user_id=ids.target,
                          session_id=check_user_id(d["session_id"], name="session_id"), role=d["role"],
                          text=clean_text(d["text"]), at=_time(d["at"], "at"),
                          recorded_at=_time(d["recorded_at"], "recorded_at"),
                          importance=_number(d.get("importance", 0.5), "importance"))
    return episode, indexed


def _rating(index: int, raw: Any, ids: _Renamer, replies: set[str]) -> Feedback:
    d, old, where = _owned_record("feedback", index, raw, _FEEDBACK_KEYS, ids)
    with _where(where):
        episode_id = ids("ep", check_user_id(d["episode_id"], name="episode_id"))
        if episode_id not in replies:
            raise InvalidInput(f"episode_id {d['episode_id']!r} is not an assistant reply of this export")
        value = d["value"]
        if isinstance(value, bool) or value not in (-1, 1):
            raise InvalidInput(f"value must be 1 or -1, got {value!r}")
        return Feedback(id=ids("fb", old), user_id=ids.target, episode_id=episode_id, value=int(value),
                        at=_time(d["at"], "at"), recorded_at=_time(d["recorded_at"], "recorded_at"))


def _event(index: int, raw: Any, ids: _Renamer) -> "GraphEvent":
    from memory.graph import GraphEvent

    d = _fields(f"graph event #{index}", raw, _EVENT_KEYS)
    where = f"graph event #{index}"
    _owner(where, d, ids)
    with _where(where):
        if d["op"] not in _REPLAYABLE:
            raise InvalidInput(f"op must be one of {_REPLAYABLE}, got {d['op']!r}")
        if isinstance(d["seq"], bool) or not isinstance(d["seq"], int):
            raise InvalidInput(f"seq must be an integer, got {d['seq']!r}")
        fact = _fact(d["fact"], ids)
        episode_id = _optional_id(d.get("episode_id"), "episode_id")
        superseded_by = _optional_id(d.get("superseded_by"), "superseded_by")
        return GraphEvent(seq=d["seq"], user_id=ids.target, op=d["op"], fact=fact, at=_time(d["at"], "at"),
                          recorded_at=_time(d["recorded_at"], "recorded_at"),
                          episode_id=None if episode_id is None else ids("ep", episode_id),
                          superseded_by=None if superseded_by is None else ids("fact", superseded_by))


def _fact(raw: Any, ids: _Renamer) -> Fact:
    d = _fields("its fact", raw, _FACT_KEYS)
    old = check_user_id(d["id"], name="fact id")
    with _where(f"fact {old!r}"):
        _owner("it", d, ids)
        known = {f for f in Fact.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInput(f"unknown field(s) {unknown}")
        valid_to = d.get("valid_to")
        category = d.get("category")
        return Fact(id=ids("fact", old), user_id=ids.target, subject=ids.subject(clean_text(d["subject"], name="subject")),
                    relation=clean_text(d["relation"], name="relation"), object=clean_text(d["object"], name="object"),
                    valid_from=_time(d["valid_from"], "valid_from"), recorded_at=_time(d["recorded_at"], "recorded_at"),
                    valid_to=None if valid_to is None else _time(valid_to, "valid_to"),
                    source_episode_ids=tuple(ids("ep", i) for i in _id_list(d.get("source_episode_ids", []),
                                                                             "source_episode_ids")),
                    confidence=_number(d.get("confidence", 1.0), "confidence"), kind=d.get("kind", "fact"),
                    polarity=d.get("polarity"),
                    strength=None if d.get("strength") is None else _number(d["strength"], "strength"),
                    category=None if category is None else clean_text(category, name="category"))


def _check_replay(user_id: str, events: list["GraphEvent"]) -> None:
    """A fact keeps its edge across events, and the log ends with at most one current fact per slot."""
    from memory.graph_state import replay
    from memory.relations import slot_key

    first: dict[str, Fact] = {}
    for index, e in enumerate(events):
        was = first.setdefault(e.fact.id, e.fact)
        if (was.subject, was.relation, was.object, was.category) != (e.fact.subject, e.fact.relation, e.fact.object,
                                                                       e.fact.category):
            raise InvalidInput(f"graph event #{index} gives fact {e.fact.id!r} another edge than its first event; "
                               "an event may change a fact's validity or evidence, never what it says")
    held: dict[tuple[str, ...], str] = {}
    for fact in replay(user_id, (e.fact for e in events)).facts.values():
        if not fact.current:
            continue
        key = slot_key(fact.subject, fact.relation, fact.object, fact.category)
        if key in held:
            raise InvalidInput(f"the graph events leave two current facts in one slot ({held[key]!r} and {fact.id!r}: "
                               f"{fact.subject} {fact.relation}); a later value must supersede the earlier one")
        held[key] = fact.id


def _summary(index: int, raw: Any, ids: _Renamer, session_of: dict[str, str]) -> "MemoryItem":
    from memory.stores import MemoryItem

    d = _fields(f"summary #{index}", raw, ("id", "text", "at"))
    with _where(f"summary #{index}"):
        old = check_user_id(d["id"], name="id")
    where = f"summary #{index} ({old!r})"
    if "user_id" in d:
        _owner(where, d, ids)
    with _where(where):
        if d.get("kind", "summary") != "summary":
            raise InvalidInput(f"kind must be 'summary', got {d.get('kind')!r}")
        # A session's summary id derives from (user, session): under a new user it must be that user's id,
        # so a later consolidation finds it instead of writing a second summary of the session.
        session = session_of.get(old)
        fresh = summary_id(ids.target, session) if session is not None else None
        return MemoryItem(id=ids("sum", old, fresh), user_id=ids.target, kind="summary", text=clean_text(d["text"]),
                          at=_time(d["at"], "at"),
                          source_episode_ids=tuple(ids("ep", i) for i in _id_list(d.get("source_episode_ids", []),
                                                                                  "source_episode_ids")))
