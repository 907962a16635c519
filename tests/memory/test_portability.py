"""Export and import as a user (and an operator handed a document) sees them: real embedder, Chroma, SQLite.

An import under a new id lands beside the original in the same home and behaves like it (facts, history,
recall, summaries) without sharing a single id; a bad document — hostile or broken, its bad record last —
is refused with a message naming the record, and the home is exactly as before (the target user absent,
in SQLite and in Chroma).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from memory import InvalidInput, ManualClock, Memory, MemoryConfig, utc
from memory.consolidation import summary_id

T0 = utc(2024, 2, 5, 8, 0)


@pytest.fixture(scope="module")
def mem(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[Memory]:
    """A home where Ann has a history: a move, a favorite, a retracted like, an assistant turn, a summary."""
    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path_factory.mktemp("porting")), embedder=embedder, clock=clock) as memory:
        for text, role in (("I live in Oslo", "user"), ("My favorite color is blue", "user"),
                           ("Noted: blue it is.", "assistant")):
            memory.remember("ann", text, role=role, session_id="s1")
        clock.advance(timedelta(days=20))
        for text in ("I moved to Bergen", "I like tea", "I no longer like tea", "My locker code is QX7731"):
            memory.remember("ann", text, session_id="s2")
        assert memory.consolidate("ann", older_than_days=7).summaries_added == 1  # session s1
        yield memory


@pytest.fixture(scope="module")
def document(mem: Memory) -> dict[str, Any]:
    return json.loads(json.dumps(mem.export("ann")))  # it must survive real JSON


def stored(mem: Memory, user: str) -> tuple[Any, ...]:
    """Everything readable about ``user``, from SQLite and from Chroma."""
    return (mem.episodes(user), mem.facts(user, include_superseded=True), mem.graph.events(user),
            mem.episodic.ids(user), mem.semantic.ids(user), summaries(mem, user))


def summaries(mem: Memory, user: str) -> list[Any]:
    return [i for i in mem.semantic.get(user) if i.kind == "summary"]


def timeline(mem: Memory, user: str, relation: str) -> list[tuple[Any, ...]]:
    """A slot's history without ids: what changed, when, and the text of its evidence."""
    texts = {e.id: e.text for e in mem.episodes(user)}
    return [(h.op, h.fact.object, h.fact.valid_from, h.fact.valid_to, h.at, texts.get(h.episode_id or ""))
            for h in mem.history(user, user, relation)]


def test_an_export_imported_under_a_new_id_lives_beside_the_original(mem: Memory, document: dict[str, Any]) -> None:
    ann_before = stored(mem, "ann")
    assert mem.import_(document, user_id="bea") == len(document["episodes"]) == 7

    ann_eps, bea_eps = mem.episodes("ann"), mem.episodes("bea")
    assert [(e.text, e.role, e.session_id, e.at, e.importance) for e in bea_eps] == \
           [(e.text, e.role, e.session_id, e.at, e.importance) for e in ann_eps]
    for rel in ("lives_in", "likes", "favorite"):
        assert timeline(mem, "bea", rel) == timeline(mem, "ann", rel)
    assert [(f.subject, f.relation, f.object) for f in mem.profile("bea")] == \
           [("bea" if f.subject == "ann" else f.subject, f.relation, f.object) for f in mem.profile("ann")]
    rec = mem.recall("bea", "where do I live now and what is my locker code?")
    assert {f.object for f in rec.profile if f.relation == "lives_in"} == {"Bergen"}
    assert "My locker code is QX7731" in [e.text for e in rec.episodes]

    # No id is shared, and every reference points into Bea's own records.
    bea_ids = {e.id for e in bea_eps}
    assert not bea_ids & {e.id for e in ann_eps}
    assert not {f.id for f in mem.facts("bea", include_superseded=True)} & {f.id for f in mem.facts("ann", include_superseded=True)}
    for fact in mem.facts("bea", include_superseded=True):
        assert set(fact.source_episode_ids) <= bea_ids
    bea_facts = {f.id for f in mem.facts("bea", include_superseded=True)}
    for event in mem.graph.events("bea"):
        assert event.episode_id is None or event.episode_id in bea_ids
        assert event.superseded_by is None or event.superseded_by in bea_facts
    [summary] = summaries(mem, "bea")
    assert summary.id == summary_id("bea", "s1") and set(summary.source_episode_ids) <= bea_ids
    assert mem.consolidate("bea", older_than_days=7).summaries_added == 0  # its session is known as summarized

    assert stored(mem, "ann") == ann_before
    mem.forget("bea")
    assert stored(mem, "ann") == ann_before and "bea" not in mem.users()
    assert "My locker code is QX7731" in [e.text for e in mem.recall("ann", "locker code").episodes]


def _last(document: dict[str, Any], key: str) -> dict[str, Any]:
    return document[key][-1]


def _rival_city(document: dict[str, Any]) -> None:
    """Append a second current lives_in fact that supersedes nothing."""
    event = copy.deepcopy(next(e for e in document["graph_events"] if e["fact"]["object"] == "Bergen"))
    event["fact"].update(id="fact_rival", object="Paris")
    document["graph_events"].append(event)


def _moved_fact(document: dict[str, Any]) -> None:
    """Append an event that rewrites what an existing fact says."""
    event = copy.deepcopy(document["graph_events"][0])
    event["fact"]["object"] = "Narnia"
    document["graph_events"].append(event)


BAD = {
    "1,000,002 characters with NUL": (lambda d: _last(d, "episodes").update(text="x" * 1_000_000 + "\x00y"),
                                      r"episode #6 \('ep_\w+'\): text is 1,000,002 characters"),
    "lone surrogates": (lambda d: _last(d, "episodes").update(text="caf\udce9"), r"episode #6 .*not valid Unicode"),
    "missing time": (lambda d: _last(d, "episodes").pop("at"), r"episode #6 lacks 'at'"),
    "bad time": (lambda d: _last(d, "episodes").update(at="yesterday"), r"episode #6 .*not an ISO-8601 time"),
    "bad role": (lambda d: _last(d, "episodes").update(role="robot"), r"episode #6 .*role must be one of"),
    "importance 2": (lambda d: _last(d, "episodes").update(importance=2), r"episode #6 .*importance must be"),
    "session id ending in a newline": (lambda d: _last(d, "episodes").update(session_id="s2\n"),
                                       r"episode #6 .*session_id 's2\\n' is not valid"),
    "episode of another user": (lambda d: _last(d, "episodes").update(user_id="mallory"),
                                r"episode #6 .*belongs to user 'mallory'"),
    "duplicate episode id": (lambda d: _last(d, "episodes").update(id=d["episodes"][0]["id"]),
                             r"appear more than once"),
    "graph event of another user": (lambda d: _last(d, "graph_events").update(user_id="mallory"),
                                    r"graph event #\d+ belongs to user 'mallory'"),
    "fact of another user": (lambda d: _last(d, "graph_events")["fact"].update(user_id="mallory"),
                             r"graph event #\d+: fact 'fact_\w+': it belongs to user 'mallory'"),
    "reserved op": (lambda d: _last(d, "graph_events").update(op="forget"), r"graph event #\d+: op must be one of"),
    "a fact rewritten": (_moved_fact, r"graph event #\d+ gives fact 'fact_\w+' another edge"),
    "two current cities": (_rival_city, r"two current facts in one slot"),
    "empty summary": (lambda d: _last(d, "summaries").update(text=" "), r"summary #0 .*empty"),
    "summary of another user": (lambda d: _last(d, "summaries").update(user_id="mallory"),
                                r"summary #0 .*belongs to user 'mallory'"),
    "episodes not a list": (lambda d: d.update(episodes={}), r"'episodes' must be a list"),
    "user id ending in a newline": (lambda d: d.update(user_id="ann\n"), r"the document's user_id: .*not valid"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_document_names_the_record_and_leaves_the_home_as_it_was(mem: Memory, document: dict[str, Any],
                                                                      case: str) -> None:
    spoil, message = BAD[case]
    bad = copy.deepcopy(document)
    spoil(bad)
    before, users = stored(mem, "ann"), mem.users()
    with pytest.raises(InvalidInput, match=message):
        mem.import_(bad, user_id="cid")
    assert stored(mem, "ann") == before and mem.users() == users
    assert stored(mem, "cid") == ([], [], [], [], [], [])  # not even an empty collection


def test_an_edited_export_whose_ids_are_taken_gets_fresh_ids_not_a_raw_integrity_error(
        mem: Memory, document: dict[str, Any]) -> None:
    edited = copy.deepcopy(document)  # someone renamed the user in the file instead of passing user_id=
    edited["user_id"] = "dan"
    for record in edited["episodes"] + edited["graph_events"] + edited["summaries"]:
        record["user_id"] = "dan"
    for event in edited["graph_events"]:
        event["fact"]["user_id"] = "dan"
        event["fact"]["subject"] = event["fact"]["subject"].replace("ann", "dan")
    ann_before = stored(mem, "ann")
    assert mem.import_(edited) == 7
    assert not {e.id for e in mem.episodes("dan")} & {e.id for e in mem.episodes("ann")}
    assert timeline(mem, "dan", "lives_in") == timeline(mem, "ann", "lives_in")
    assert stored(mem, "ann") == ann_before


def test_an_exact_round_trip_keeps_every_id(tmp_path: Path, embedder, document: dict[str, Any]) -> None:
    with Memory(MemoryConfig(home=tmp_path / "elsewhere"), embedder=embedder, clock=ManualClock(T0)) as other:
        assert other.import_(document) == 7
        again = json.loads(json.dumps(other.export("ann")))
    for key in ("episodes", "graph_events", "summaries"):
        assert [{k: v for k, v in r.items() if k != "seq"} for r in again[key]] == \
               [{k: v for k, v in r.items() if k != "seq"} for r in document[key]]


def test_a_chroma_failure_during_import_leaves_the_target_absent(mem: Memory, document: dict[str, Any],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = mem.semantic.add

    def failing(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # written, then the store reports a failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(mem.semantic, "add", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        mem.import_(document, user_id="eve")
    monkeypatch.undo()
    assert stored(mem, "eve") == ([], [], [], [], [], []) and "eve" not in mem.users()
    assert mem.import_(document, user_id="eve") == 7


def test_importing_over_an_existing_user_is_refused(mem: Memory, document: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="already has memories"):
        mem.import_(document)


def test_a_home_from_before_the_summaries_table_keeps_its_summaries_in_exports(tmp_path: Path, embedder) -> None:
    import sqlite3

    home, clock = tmp_path / "old-home", ManualClock(T0)
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=clock) as mem:
        mem.remember("fay", "We planned the Kyoto trip today", session_id="trip")
        clock.advance(timedelta(days=10))
        assert mem.consolidate("fay").summaries_added == 1
    with sqlite3.connect(home / "memory.sqlite") as db:  # what an older pllm left: summaries in Chroma only
        db.execute("DROP TABLE summaries")
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=clock) as mem:  # opening adopts them
        assert ["Kyoto" in s["text"] for s in mem.export("fay")["summaries"]] == [True]
    with Memory(MemoryConfig(home=home), embedder=embedder, read_only=True) as reader:  # no Chroma needed
        assert ["Kyoto" in s["text"] for s in reader.export("fay")["summaries"]] == [True]
