"""The knowledge graph against a real SQLite log (in memory, or a file where persistence matters)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.clock import ManualClock, utc
from memory.errors import InvalidInput
from memory.extraction.base import Candidate
from memory.graph import GraphEvent, KnowledgeGraph
from memory.records import FactAdded, FactRetracted, FactSuperseded, PreferenceDrift, record_to_dict

T0 = utc(2024, 1, 1)


def day(n: int):
    return T0 + timedelta(days=n)


def C(relation: str, obj: str, subject: str = "user", **kw) -> Candidate:
    return Candidate(subject, relation, obj, **kw)


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture()
def kg(clock: ManualClock):
    graph = KnowledgeGraph(":memory:", clock)
    yield graph
    graph.close()


def say(kg: KnowledgeGraph, clock: ManualClock, n: int, *cands: Candidate, user: str = "u1", ep: str | None = None):
    """Apply candidates as said on day ``n`` (the clock moves there: recorded_at == at)."""
    clock.set(day(n))
    return kg.apply(user, list(cands), episode_id=ep or f"ep{n}", at=day(n))


def current(kg: KnowledgeGraph, user: str = "u1", **kw) -> set[tuple]:
    return {(f.subject, f.relation, f.object, f.category) for f in kg.facts(user, **kw)}


# ---------------------------------------------------------------------------------------------- apply


def test_new_facts_are_added_with_the_user_as_subject(kg, clock) -> None:
    events = say(kg, clock, 0, C("lives_in", "Oslo"), C("likes", "sushi"), C("lives_in", "Berlin", subject="Anna"))
    assert [type(e) for e in events] == [FactAdded] * 3
    assert current(kg) == {("u1", "lives_in", "Oslo", None), ("u1", "likes", "sushi", None),
                           ("Anna", "lives_in", "Berlin", None)}
    likes = kg.facts("u1", relation="likes")[0]
    assert (likes.kind, likes.polarity, likes.source_episode_ids) == ("preference", "likes", ("ep0",))
    assert likes.valid_from == likes.recorded_at == T0


def test_new_value_of_a_functional_slot_supersedes_and_keeps_history(kg, clock) -> None:
    say(kg, clock, 0, C("lives_in", "Oslo"))
    (event,) = say(kg, clock, 30, C("lives_in", "Bergen"))
    assert isinstance(event, FactSuperseded)
    assert (event.old.object, event.old.valid_to) == ("Oslo", day(30))
    assert (event.new.object, event.new.valid_from) == ("Bergen", day(30))
    assert current(kg) == {("u1", "lives_in", "Bergen", None)}
    everything = kg.facts("u1", include_superseded=True)
    assert [(f.object, f.valid_to) for f in everything] == [("Oslo", day(30)), ("Bergen", None)]
    assert kg.get("u1", event.old.id).valid_to == day(30)


def test_favorite_is_one_slot_per_category_and_british_spelling_is_the_same_slot(kg, clock) -> None:
    say(kg, clock, 0, C("favorite", "sushi", category="food"), C("favorite", "blue", category="colour"))
    events = say(kg, clock, 1, C("favorite", "green", category="color"))
    assert len(events) == 1 and isinstance(events[0], FactSuperseded) and events[0].old.object == "blue"
    assert current(kg) == {("u1", "favorite", "sushi", "food"), ("u1", "favorite", "green", "color")}


def test_repeating_a_current_value_adds_evidence_but_no_event(kg, clock) -> None:
    say(kg, clock, 0, C("lives_in", "Oslo"))
    assert say(kg, clock, 5, C("lives_in", "oslo"), ep="ep-again") == []  # case-insensitive match
    (fact,) = kg.facts("u1")
    assert fact.object == "Oslo" and fact.source_episode_ids == ("ep0", "ep-again")
    assert [h.op for h in kg.history("u1", "user", "lives_in")] == ["assert", "assert"]
    assert say(kg, clock, 6, C("lives_in", "Oslo"), ep="ep-again") == []  # the same episode twice: nothing new
    assert len(kg.events("u1")) == 2


def test_dislike_after_like_closes_the_like(kg, clock) -> None:
    say(kg, clock, 0, C("likes", "coffee"), C("likes", "tea"))
    (event,) = say(kg, clock, 10, C("dislikes", "Coffee"))
    assert isinstance(event, FactSuperseded) and (event.old.relation, event.new.relation) == ("likes", "dislikes")
    assert current(kg) == {("u1", "likes", "tea", None), ("u1", "dislikes", "Coffee", None)}
    assert [(h.fact.relation, h.op) for h in kg.history("u1", "user", "likes", obj="coffee")] == [
        ("likes", "assert"), ("likes", "supersede"), ("dislikes", "assert")]


def test_accumulating_relations_keep_every_value(kg, clock) -> None:
    say(kg, clock, 0, C("likes", "sushi"), C("allergic_to", "peanuts"), C("has_pet", "Rex", category="dog"))
    events = say(kg, clock, 1, C("likes", "ramen"), C("allergic_to", "shellfish"), C("has_pet", "Mia", category="cat"))
    assert [type(e) for e in events] == [FactAdded] * 3
    assert len(kg.facts("u1")) == 6


def test_negation_closes_only_the_matching_current_edge(kg, clock) -> None:
    say(kg, clock, 0, C("lives_in", "Bergen"), C("likes", "coffee"), C("has_pet", "Rex", category="dog"))
    assert say(kg, clock, 1, C("lives_in", "Oslo", negated=True)) == []  # not the current value: nothing
    assert say(kg, clock, 1, C("dislikes", "coffee", negated=True)) == []  # polarity must match
    (retracted,) = say(kg, clock, 2, C("likes", "Coffee", negated=True))
    assert isinstance(retracted, FactRetracted) and retracted.fact.valid_to == day(2)
    assert retracted.evidence_episode_id == "ep2"
    (pet,) = say(kg, clock, 3, C("has_pet", "dog", negated=True))  # "I don't have a dog anymore": by category
    assert pet.fact.object == "Rex"
    assert current(kg) == {("u1", "lives_in", "Bergen", None)}
    assert [h.op for h in kg.history("u1", "user", "likes")] == ["assert", "retract"]


def test_style_preference_changes_emit_preference_drift(kg, clock) -> None:
    first = say(kg, clock, 0, C("prefers_verbosity", "detailed"))
    assert PreferenceDrift("verbosity", None, "detailed", ("ep0",)) in first
    changed = say(kg, clock, 1, C("prefers_verbosity", "Concise"), ep="ep-short")
    assert [type(e) for e in changed] == [FactSuperseded, PreferenceDrift]
    assert changed[1] == PreferenceDrift("verbosity", "detailed", "concise", ("ep-short",))
    assert say(kg, clock, 2, C("prefers_verbosity", "concise")) == []
    with pytest.raises(InvalidInput, match="prefers_verbosity must be one of"):
        say(kg, clock, 3, C("prefers_verbosity", "purple"))


def test_switching_moves_a_favorite_that_held_the_old_value(kg, clock) -> None:
    say(kg, clock, 0, C("likes", "coffee"), C("favorite", "coffee", category="drink"),
        C("favorite", "pizza", category="food"))
    events = say(kg, clock, 1, C("likes", "coffee", negated=True), C("likes", "green tea", replaces="coffee"))
    assert {type(e) for e in events} == {FactRetracted, FactAdded, FactSuperseded}
    assert current(kg) == {("u1", "likes", "green tea", None), ("u1", "favorite", "green tea", "drink"),
                           ("u1", "favorite", "pizza", "food")}


def test_bad_candidates_write_nothing(kg, clock) -> None:
    with pytest.raises(InvalidInput, match="object must be a non-empty string"):
        say(kg, clock, 0, C("lives_in", "Oslo"), C("likes", "  "))
    with pytest.raises(InvalidInput, match="user_id"):
        kg.apply("", [C("lives_in", "Oslo")], episode_id=None, at=T0)
    assert kg.events("u1") == [] and kg.facts("u1") == []


def test_statements_must_arrive_in_time_order_per_slot(kg, clock) -> None:
    say(kg, clock, 10, C("lives_in", "Oslo"))
    with pytest.raises(InvalidInput, match="time order"):
        kg.apply("u1", [C("lives_in", "Bergen")], episode_id=None, at=day(5))
    assert current(kg) == {("u1", "lives_in", "Oslo", None)}


# ---------------------------------------------------------------------------------------------- reads


def test_as_of_answers_what_was_true_and_known_then(kg, clock) -> None:
    say(kg, clock, 0, C("lives_in", "Oslo"))
    say(kg, clock, 60, C("lives_in", "Bergen"))
    assert current(kg, as_of=day(30)) == {("u1", "lives_in", "Oslo", None)}
    assert current(kg, as_of=day(90)) == {("u1", "lives_in", "Bergen", None)}
    assert current(kg, as_of=day(-1)) == set()
    # Learnt on day 100 that the user had a dog since day 20: unknown as of day 50, known as of day 100.
    clock.set(day(100))
    kg.apply("u1", [C("has_pet", "Rex", category="dog")], episode_id="late", at=day(20))
    assert ("u1", "has_pet", "Rex", "dog") not in current(kg, as_of=day(50))
    assert ("u1", "has_pet", "Rex", "dog") in current(kg, as_of=day(100))
    # include_superseded with as_of: what we knew on day 90, with the state it had then.
    assert {(f.object, f.valid_to) for f in kg.facts("u1", as_of=day(90), include_superseded=True)} == {
        ("Oslo", day(60)), ("Bergen", None)}


def test_history_is_the_slot_timeline_oldest_first(kg, clock) -> None:
    say(kg, clock, 0, C("favorite", "sushi", category="food"), C("favorite", "red", category="color"))
    say(kg, clock, 1, C("favorite", "ramen", category="food"))
    say(kg, clock, 2, C("favorite", "pizza", category="food"))
    timeline = kg.history("u1", "self", "favorite", category="food")
    assert [(h.fact.object, h.op, h.at) for h in timeline] == [
        ("sushi", "assert", day(0)), ("sushi", "supersede", day(1)), ("ramen", "assert", day(1)),
        ("ramen", "supersede", day(2)), ("pizza", "assert", day(2))]
    assert [h.episode_id for h in timeline][-1] == "ep2"


def test_filters_and_third_parties(kg, clock) -> None:
    say(kg, clock, 0, C("has_sibling", "Anna", category="sister"), C("lives_in", "Berlin", subject="Anna"),
        C("works_as", "doctor", subject="Anna"), C("likes", "jazz"))
    assert current(kg, subject="anna") == {("Anna", "lives_in", "Berlin", None), ("Anna", "works_as", "doctor", None)}
    assert current(kg, subject="user", kind="preference") == {("u1", "likes", "jazz", None)}
    assert current(kg, relation="lives_in") == {("Anna", "lives_in", "Berlin", None)}


def test_neighbourhood_matches_names_case_insensitively_and_follows_hops(kg, clock) -> None:
    say(kg, clock, 0, C("has_sibling", "Anna", category="sister"), C("lives_in", "Berlin", subject="Anna"),
        C("likes", "jazz"), C("likes", "berlin", subject="Tom"))
    one = {(f.subject, f.relation, f.object) for f in kg.neighbourhood("u1", ["ANNA"])}
    assert one == {("u1", "has_sibling", "Anna"), ("Anna", "lives_in", "Berlin")}
    two = {(f.subject, f.object) for f in kg.neighbourhood("u1", ["anna"], hops=2)}
    assert ("u1", "jazz") in two and ("Tom", "berlin") in two  # via the user and via the merged Berlin node
    assert kg.neighbourhood("u1", ["nobody"]) == []
    say(kg, clock, 1, C("lives_in", "Berlin", subject="Anna", negated=True))
    assert {f.object for f in kg.neighbourhood("u1", ["Anna"])} == {"Anna"}  # closed edges are not neighbours


def test_graph_returns_an_independent_copy(kg, clock) -> None:
    say(kg, clock, 0, C("lives_in", "Oslo"), C("likes", "ski"))
    say(kg, clock, 5, C("lives_in", "Bergen"))
    g = kg.graph("u1")
    assert isinstance(g, nx.MultiDiGraph) and set(g.nodes) == {"u1", "Bergen", "ski"}
    assert {d["fact"].object for _, _, d in g.edges(data=True)} == {"Bergen", "ski"}
    g.remove_node("u1")
    assert kg.graph("u1").number_of_edges() == 2
    assert "Oslo" in kg.graph("u1", as_of=day(1)).nodes


def test_retract_by_id(kg, clock) -> None:
    (added,) = say(kg, clock, 0, C("works_as", "nurse"))
    clock.set(day(3))
    event = kg.retract("u1", added.fact.id, at=day(3), episode_id="oops")
    assert event.fact.valid_to == day(3) and kg.facts("u1") == []
    with pytest.raises(InvalidInput, match="already closed"):
        kg.retract("u1", added.fact.id, at=day(4))
    with pytest.raises(InvalidInput, match="no fact"):
        kg.retract("u1", "fact_missing", at=day(4))


def test_lru_eviction_rebuilds_users_from_the_log(clock) -> None:
    kg = KnowledgeGraph(":memory:", clock, max_users=2)
    for i, user in enumerate(["a", "b", "c", "a", "d"]):
        kg.apply(user, [C("lives_in", f"city{i}")], episode_id=None, at=day(i))
    assert current(kg, "a") == {("a", "lives_in", "city3", None)}
    assert [len(kg.facts(u, include_superseded=True)) for u in "abcd"] == [2, 1, 1, 1]
    assert kg.users() == ["a", "b", "c", "d"]


def test_concurrent_writers_on_different_users(kg) -> None:
    def worker(user: str) -> None:
        for i in range(20):
            kg.apply(user, [C("likes", f"thing{i}")], episode_id=None, at=day(i))

    threads = [threading.Thread(target=worker, args=(f"user{t}",)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(kg.facts(f"user{t}")) for t in range(4)] == [20] * 4


# ---------------------------------------------------------------------------------------------- durability


def test_facts_survive_close_and_reopen(tmp_path: Path, clock) -> None:
    path = tmp_path / "memory.sqlite"
    kg = KnowledgeGraph(path, clock)
    say(kg, clock, 0, C("lives_in", "Oslo"), C("likes", "coffee"))
    say(kg, clock, 9, C("lives_in", "Bergen"), C("likes", "coffee", negated=True))
    before = kg.facts("u1", include_superseded=True)
    kg.close()
    with pytest.raises(Exception, match="closed"):
        kg.facts("u1")
    reopened = KnowledgeGraph(path, clock)
    assert reopened.facts("u1", include_superseded=True) == before
    assert current(reopened) == {("u1", "lives_in", "Bergen", None)}
    reopened.close()


def test_rollback_of_the_callers_transaction_leaves_the_graph_unchanged(tmp_path: Path, clock) -> None:
    path = tmp_path / "memory.sqlite"
    kg = KnowledgeGraph(path, clock)
    say(kg, clock, 0, C("lives_in", "Oslo"))
    conn = sqlite3.connect(path)  # the memory facade's connection: episodes + graph events in one transaction
    events = kg.apply("u1", [C("lives_in", "Bergen")], episode_id="ep1", at=day(1), conn=conn)
    assert isinstance(events[0], FactSuperseded)
    assert current(kg) == {("u1", "lives_in", "Oslo", None)}  # not committed: other readers do not see it
    conn.rollback()
    kg.invalidate("u1")
    assert current(kg) == {("u1", "lives_in", "Oslo", None)}
    assert [e.op for e in kg.events("u1")] == ["assert"]
    kg.apply("u1", [C("lives_in", "Bergen")], episode_id="ep2", at=day(2), conn=conn)
    conn.commit()
    kg.invalidate("u1")
    assert current(kg) == {("u1", "lives_in", "Bergen", None)}
    conn.close()
    kg.close()


def test_a_connection_to_another_database_is_refused(tmp_path: Path, clock) -> None:
    kg = KnowledgeGraph(tmp_path / "a.sqlite", clock)
    other = sqlite3.connect(tmp_path / "b.sqlite")
    with pytest.raises(InvalidInput, match="not on this graph's log"):
        kg.apply("u1", [C("lives_in", "Oslo")], episode_id=None, at=T0, conn=other)
    autocommit = sqlite3.connect(tmp_path / "a.sqlite", isolation_level=None)
    with pytest.raises(InvalidInput, match="autocommit"):
        kg.apply("u1", [C("lives_in", "Oslo")], episode_id=None, at=T0, conn=autocommit)
    assert kg.facts("u1") == []


def test_export_import_round_trip_is_exact(kg, clock) -> None:
    say(kg, clock, 0, C("lives_in", "Oslo"), C("likes", "coffee"), C("favorite", "coffee", category="drink"))
    say(kg, clock, 5, C("lives_in", "Bergen"), C("likes", "tea", replaces="coffee"), C("likes", "coffee", negated=True))
    say(kg, clock, 6, C("lives_in", "Bergen"))
    exported = json.loads(json.dumps([record_to_dict(e) for e in kg.events("u1")]))
    target = KnowledgeGraph(":memory:", clock)
    target.import_events("u2", [GraphEvent.from_dict(d) for d in exported])
    def strip(facts):
        return [(f.id, f.subject.replace("u1", "u2"), f.relation, f.object, f.valid_from, f.valid_to, f.recorded_at,
                 f.source_episode_ids) for f in facts]

    assert strip(target.facts("u2", include_superseded=True)) == strip(kg.facts("u1", include_superseded=True))
    assert [(e.op, e.fact_id, e.at, e.recorded_at, e.episode_id) for e in target.events("u2")] == [
        (e.op, e.fact_id, e.at, e.recorded_at, e.episode_id) for e in kg.events("u1")]
    assert current(target, "u2", as_of=day(3)) == {("u2", "lives_in", "Oslo", None), ("u2", "likes", "coffee", None),
                                                   ("u2", "favorite", "coffee", "drink")}
    with pytest.raises(InvalidInput, match="already has"):
        target.import_events("u2", target.events("u2"))


def test_forget_removes_every_trace_of_the_user(tmp_path: Path, clock) -> None:
    path = tmp_path / "memory.sqlite"
    kg = KnowledgeGraph(path, clock)
    say(kg, clock, 0, C("lives_in", "Zanzibar-secret"), user="alice")
    say(kg, clock, 0, C("lives_in", "Oslo"), user="bob")
    assert kg.forget("alice") == 1
    assert kg.users() == ["bob"] and kg.facts("alice") == [] and kg.events("alice") == []
    assert current(kg, "bob") == {("bob", "lives_in", "Oslo", None)}
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("memory.sqlite"))
    assert b"Zanzibar-secret" not in on_disk and b"alice" not in on_disk
    kg.close()


# ---------------------------------------------------------------------------------------------- properties

_FUNCTIONAL = [("lives_in", None), ("favorite", "food"), ("favorite", "color"), ("diet", None)]
_ACCUMULATING = ["likes", "dislikes", "allergic_to", "has_pet", "plans"]
_values = st.sampled_from(["oslo", "Bergen", "tea", "Rex", "blue", "sushi", "vegan"])
_candidates = st.one_of(
    st.builds(lambda rc, v: C(rc[0], v, category=rc[1]), st.sampled_from(_FUNCTIONAL), _values),
    st.builds(lambda r, v: C(r, v), st.sampled_from(_ACCUMULATING), _values),
    st.builds(lambda r, v: C(r, v, subject="Anna"), st.sampled_from(["lives_in", "likes"]), _values),
)


@settings(max_examples=100, deadline=None)
@given(history=st.lists(_candidates, max_size=25), slot=st.sampled_from(_FUNCTIONAL),
       value=st.sampled_from(["Paris", "x"]))
def test_superseding_one_slot_never_touches_another(history, slot, value) -> None:
    clock = ManualClock(T0)
    kg = KnowledgeGraph(":memory:", clock)
    for i, cand in enumerate(history):
        kg.apply("u1", [cand], episode_id=f"e{i}", at=day(i))
    before = {f.id: f for f in kg.facts("u1", include_superseded=True)}
    relation, category = slot
    old = [f for f in kg.facts("u1", subject="user", relation=relation) if f.category == category]
    events = kg.apply("u1", [C(relation, value, category=category)], episode_id="new", at=day(100))
    after = {f.id: f for f in kg.facts("u1", include_superseded=True)}
    changed = {i for i in before if before[i] != after[i]}
    assert changed <= {f.id for f in old}  # only the slot's own current fact may change (it gets closed)
    assert all(after[i].valid_to == day(100) for i in changed)
    added = [f for i, f in after.items() if i not in before]
    assert [(f.relation, f.object, f.category) for f in added] == [(relation, value, category)]
    assert len(events) == 1 and isinstance(events[0], FactSuperseded if old else FactAdded)
    kg.close()


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["A", "B"]), _candidates, st.booleans()), max_size=25))
def test_one_users_facts_never_appear_for_another(ops) -> None:
    clock = ManualClock(T0)
    shared, alone = KnowledgeGraph(":memory:", clock), KnowledgeGraph(":memory:", clock)
    for i, (user, cand, negate) in enumerate(ops):
        cand = Candidate(**{**{f: getattr(cand, f) for f in cand.__slots__}, "negated": negate})
        shared.apply(user, [cand], episode_id=f"{user}{i}", at=day(i))
        if user == "B":
            alone.apply("B", [cand], episode_id=f"B{i}", at=day(i))
    a_ids = {f.id for f in shared.facts("A", include_superseded=True)}
    def view(facts):
        return sorted((f.subject, f.relation, f.object, f.category, f.valid_from, f.valid_to, f.source_episode_ids)
                      for f in facts)

    b_facts = shared.facts("B", include_superseded=True)
    assert all(f.user_id == "B" and f.id not in a_ids for f in b_facts)
    assert view(b_facts) == view(alone.facts("B", include_superseded=True))
    assert not {f.id for f in shared.neighbourhood("B", ["A", "user", "Anna", "oslo", "tea"], hops=2)} & a_ids
    assert all(e.user_id == "B" for e in shared.events("B"))
    assert all(h.fact.id not in a_ids for h in shared.history("B", "Anna", "likes"))
