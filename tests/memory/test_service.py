"""The memory facade as a user of pllm sees it: real MiniLM embedder, embedded Chroma, SQLite, networkx.

What is checked is what a user would notice: a move replaces the old city (which stays in history and
in "as of" queries), unrelated facts never change, nobody sees anybody else's memories, export/import
gives the same memory back, ``forget`` leaves no trace on disk, a crash or a failed store write never
leaves Chroma and SQLite disagreeing, bad input is refused with nothing written, and the episode cap
keeps facts, summaries and the memories that were used.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from memory import (
    FactRetracted,
    FactSuperseded,
    InvalidInput,
    ManualClock,
    Memory,
    MemoryConfig,
    StoreError,
    UnknownUser,
    utc,
)

REPO = Path(__file__).resolve().parents[2]
T0 = utc(2024, 1, 8, 9, 0)
FEW = settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: examples are slow


def uid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def objects(facts: Any, relation: str | None = None) -> set[str]:
    facts = [getattr(f, "fact", f) for f in facts]  # ScoredFact → Fact
    return {f.object for f in facts if relation is None or f.relation == relation}


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(scope="module")
def mem(tmp_path_factory: pytest.TempPathFactory, embedder, clock: ManualClock) -> Iterator[Memory]:
    """One memory shared by the tests that use distinct user ids (the clock only moves forward)."""
    with Memory(MemoryConfig(home=tmp_path_factory.mktemp("shared-home")), embedder=embedder, clock=clock) as memory:
        yield memory


def assert_consistent(mem: Memory, user: str) -> None:
    """Chroma and SQLite agree: same episodes indexed, one semantic item per graph fact, same currency."""
    episodes = {e.id for e in mem.episodes(user)}
    assert set(mem.episodic.ids(user)) == episodes
    items = {i.fact_id: i.current for i in mem.semantic.get(user) if i.kind != "summary"}
    facts = {f.id: f.current for f in mem.facts(user, include_superseded=True)}
    assert items == facts
    for fact in mem.facts(user, include_superseded=True):
        assert set(fact.source_episode_ids) <= episodes, "a fact cites an episode that is not stored"


# ------------------------------------------------------------------------------- 1. supersession


def test_a_move_replaces_the_old_city_keeps_it_in_history_and_as_of(mem: Memory, clock: ManualClock) -> None:
    user = uid("mover")
    first = mem.remember(user, "I live in Oslo")
    clock.advance(timedelta(days=30))
    second = mem.remember(user, "I moved to Bergen")

    assert [type(e) for e in second.events if not type(e).__name__.endswith("Drift")] == [FactSuperseded]
    assert objects(mem.profile(user), "lives_in") == {"Bergen"}

    timeline = mem.history(user, user, "lives_in")
    closed = [h for h in timeline if h.op == "supersede"]
    assert [h.fact.object for h in closed] == ["Oslo"]
    assert closed[0].fact.valid_to == second.episode.at
    assert closed[0].episode_id == second.episode.id  # the evidence for the change is the turn that said it
    assert [h.fact.object for h in timeline if h.op == "assert"] == ["Oslo", "Bergen"]

    between = first.episode.at + timedelta(days=15)
    assert objects(mem.facts(user, as_of=between), "lives_in") == {"Oslo"}
    assert objects(mem.facts(user), "lives_in") == {"Bergen"}

    now = mem.recall(user, "where do I live")
    assert objects(now.profile, "lives_in") == {"Bergen"}
    assert "Oslo" not in objects(now.facts) and "Bergen" in objects(now.facts)
    everything = mem.recall(user, "where do I live", include_superseded=True)
    assert {"Oslo", "Bergen"} <= objects(everything.facts)
    assert objects(everything.profile, "lives_in") == {"Bergen"}  # the profile is always "as of now"
    then = mem.recall(user, "where do I live", as_of=between)
    assert objects(then.profile, "lives_in") == {"Oslo"}
    assert_consistent(mem, user)


# -------------------------------------------------------------------- 2. negation and accumulation


def test_negations_close_facts_and_likes_accumulate(mem: Memory, clock: ManualClock) -> None:
    user = uid("diet")
    mem.remember(user, "I eat meat")
    mem.remember(user, "I live in Tromso")
    for text in ("I like hiking", "I love jazz", "I like tea"):
        mem.remember(user, text)
    assert objects(mem.profile(user), "likes") == {"meat", "hiking", "jazz", "tea"}

    clock.advance(timedelta(days=3))
    meat = mem.remember(user, "I don't eat meat anymore")
    assert any(isinstance(e, FactRetracted) and e.fact.object == "meat" for e in meat.events)
    moved = mem.remember(user, "I no longer live in Tromso")
    assert any(isinstance(e, FactRetracted) and e.fact.object == "Tromso" for e in moved.events)

    profile = mem.profile(user)
    assert objects(profile, "likes") == {"hiking", "jazz", "tea"}  # the other likes are untouched
    assert objects(profile, "lives_in") == set()
    assert objects(profile, "diet") == {"vegetarian"}
    retracted = [h for h in mem.history(user, user, "lives_in") if h.op == "retract"]
    assert [(h.fact.object, h.episode_id) for h in retracted] == [("Tromso", moved.episode.id)]
    assert "meat" not in objects(mem.recall(user, "what do I eat").facts)
    assert_consistent(mem, user)


# ----------------------------------------------------------- 3. unrelated facts survive a change

UNRELATED = ["My favorite color is blue", "I work as a nurse", "I have a dog named Rex", "I like hiking",
             "My sister is called Mia", "I am allergic to peanuts", "I study physics", "I hate olives"]
CITIES = ["Oslo", "Lima", "Quito", "Perth", "Cairo", "Dakar"]


@FEW
@given(unrelated=st.lists(st.sampled_from(UNRELATED), min_size=1, max_size=4, unique=True),
       cities=st.lists(st.sampled_from(CITIES), min_size=2, max_size=2, unique=True))
def test_a_supersession_leaves_every_unrelated_fact_as_it_was(mem: Memory, unrelated: list[str],
                                                              cities: list[str]) -> None:
    user = uid("calm")
    mem.remember(user, f"I live in {cities[0]}")
    for text in unrelated:
        mem.remember(user, text)
    before = {f.id: f for f in mem.facts(user, include_superseded=True) if f.relation != "lives_in"}
    assert len(before) == len(unrelated)
    mem.remember(user, f"I moved to {cities[1]}")
    after = {f.id: f for f in mem.facts(user, include_superseded=True) if f.relation != "lives_in"}
    assert after == before
    assert objects(mem.profile(user), "lives_in") == {cities[1]}


# --------------------------------------------------------------------------------- 4. isolation

WORDS = ["garden", "piano", "coffee", "train", "river", "sushi", "chess", "winter", "Lisbon", "cat"]
TEMPLATES = ["I like {w}", "I went to the {w} yesterday", "My favorite food is {w}", "Tell me about {w}",
             "I live in {w}", "We talked about {w} and {v}"]


@st.composite
def turns(draw: Any, tag: str) -> list[str]:
    """Turns that share vocabulary across users; each carries a token unique to its owner."""
    n = draw(st.integers(min_value=1, max_value=4))
    out = []
    for i in range(n):
        template = draw(st.sampled_from(TEMPLATES))
        w, v = draw(st.sampled_from(WORDS)), draw(st.sampled_from(WORDS))
        out.append(template.format(w=w, v=v) + f" ({tag}{i})")
    return out


@FEW
@given(a_turns=turns("alphatok"), b_turns=turns("betatok"))
def test_no_read_of_one_user_ever_shows_another_users_memories(mem: Memory, a_turns: list[str],
                                                               b_turns: list[str]) -> None:
    a, b = uid("a"), uid("b")
    for text_a, text_b in zip(a_turns, b_turns):
        mem.remember(a, text_a)
        mem.remember(b, text_b)
    for text in a_turns[len(b_turns):]:
        mem.remember(a, text)
    for text in b_turns[len(a_turns):]:
        mem.remember(b, text)
    b_facts = {f.id for f in mem.facts(b, include_superseded=True)}
    b_episodes = {e.id for e in mem.episodes(b)}

    for query in b_turns + ["what do I like?"]:  # B's own words are the hardest query for A
        rec = mem.recall(a, query)
        assert not {e.episode_id for e in rec.episodes} & b_episodes
        assert not {f.fact.id for f in rec.facts} & b_facts
        assert not {f.id for f in rec.profile} & b_facts
        assert "betatok" not in repr((rec.profile, rec.facts, rec.episodes))  # (rec.query is B's text here)
    assert all(f.user_id == a for f in mem.profile(a))
    assert "betatok" not in repr(mem.episodes(a)) + repr(mem.profile(a))
    assert "betatok" not in json.dumps(mem.export(a))
    assert "alphatok" not in json.dumps(mem.export(b))


# ----------------------------------------------------------------------- 5. export / import


def test_export_forget_import_gives_the_same_memory_back(mem: Memory, clock: ManualClock) -> None:
    user = uid("porter")
    mem.remember(user, "I live in Oslo", session_id="s1")
    mem.remember(user, "My favorite color is blue", session_id="s1")
    mem.remember(user, "Thanks, that helps!", role="assistant", session_id="s1", importance=0.9)
    clock.advance(timedelta(days=20))
    mem.remember(user, "I moved to Bergen", session_id="s2")
    mem.remember(user, "I like tea", session_id="s2")
    mem.recall(user, "where do I live")
    episodes, profile = mem.episodes(user), mem.profile(user)
    timelines = {rel: mem.history(user, user, rel) for rel in ("lives_in", "likes", "favorite")}

    document = json.loads(json.dumps(mem.export(user)))  # it must survive real JSON
    removed = mem.forget(user)
    assert removed["episodes"] == 5 and removed["graph_events"] > 0
    with pytest.raises(UnknownUser):
        mem.export(user)
    assert mem.recall(user, "where do I live").profile == []

    assert mem.import_(document) == 5
    assert mem.episodes(user) == episodes
    assert mem.profile(user) == profile
    assert {rel: mem.history(user, user, rel) for rel in timelines} == timelines
    rec = mem.recall(user, "where do I live now?")
    assert objects(rec.profile, "lives_in") == {"Bergen"}
    assert "I moved to Bergen" in [e.text for e in rec.episodes]
    assert_consistent(mem, user)
    with pytest.raises(InvalidInput, match="already has memories"):
        mem.import_(document)  # never mixes two histories


# ---------------------------------------------------------------------------------- 6. forget


def _files_with(home: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_forget_leaves_nothing_in_chroma_sqlite_or_on_disk(tmp_path: Path, embedder) -> None:
    home, clock = tmp_path / "home", ManualClock(T0)
    marker = f"Qzv{uuid.uuid4().hex[:12]}"
    user, keeper = f"forgetme-{marker}", uid("keeper")
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=clock) as mem:
        mem.remember(keeper, "I live in Keepertown and I like KEEPSAKE gardening")
        for text in (f"I live in {marker}ville", f"My favorite color is {marker}", f"I met {marker} at the café",
                     f"Remember the code {marker} for the door"):
            mem.remember(user, text, session_id=f"sess-{marker}")
            clock.advance(timedelta(minutes=5))
        mem.recall(user, f"what is the code {marker}?")  # metadata updates land in Chroma's log too
        mem.consolidate(user, older_than_days=0)  # a summary item quoting the turns
        assert _files_with(home, marker.encode()), "the marker should be on disk before forget"

        removed = mem.forget(user)
        assert removed["episodes"] == 4 and removed["episodes_index"] == 4 and removed["semantic_items"] >= 3
        assert mem.episodic.ids(user) == [] and mem.semantic.ids(user) == []
        assert user not in mem.users()
        with pytest.raises(UnknownUser):
            mem.export(user)
        assert mem.recall(user, marker).episodes == []

    for name in ("memory.sqlite", "journal.sqlite"):
        with sqlite3.connect(home / name) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
                assert marker not in repr(rows), f"{name}:{table} still holds the user"
    assert _files_with(home, marker.encode()) == [], "the forgotten user's text is still on disk"

    with Memory(MemoryConfig(home=home), embedder=embedder, clock=clock) as mem:  # the other user survives
        assert [e.text for e in mem.episodes(keeper)] == ["I live in Keepertown and I like KEEPSAKE gardening"]
        assert objects(mem.profile(keeper), "lives_in") == {"Keepertown"}
        assert mem.recall(keeper, "gardening").episodes[0].text.startswith("I live in Keepertown")
        assert mem.users() == [keeper]
    assert _files_with(home, b"KEEPSAKE")


# ---------------------------------------------------------------------------- 7. crash atomicity

CRASH = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    from memory import ManualClock, Memory, MemoryConfig, utc
    home, user, where = sys.argv[1], sys.argv[2], sys.argv[3]
    mem = Memory(MemoryConfig(home=home), clock=ManualClock(utc(2024, 2, 1)))
    mem.remember(user, "I live in Oslo")

    def die_after(call):
        def wrapper(*args, **kwargs):
            call(*args, **kwargs)
            os._exit(1)  # a crash: no except, no finally, no atexit
        return wrapper

    if where == "after_chroma":  # the turn's last Chroma write is done; the SQLite transaction is not
        mem.semantic.mark_superseded = die_after(mem.semantic.mark_superseded)
    else:  # "after_commit": SQLite committed; the journal entry is still there
        mem._journal.done = die_after(lambda turn_id: None)
    mem.remember(user, "I moved to Bergen")
    sys.exit(3)  # not reached
    """
)


@pytest.fixture(scope="module")
def crashed_homes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Homes left behind by a process killed mid-turn, one per crash point (both run at once)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    homes = {where: tmp_path_factory.mktemp(f"crash-{where}") / "home" for where in ("after_chroma", "after_commit")}
    procs = {where: subprocess.Popen([sys.executable, "-c", CRASH.format(repo=str(REPO)), str(home), "crashy", where],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for where, home in homes.items()}
    for where, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, f"{where}: {err[-3000:]}"
    return homes


@pytest.mark.parametrize("where", ["after_chroma", "after_commit"])
def test_a_crash_mid_turn_leaves_chroma_and_sqlite_in_agreement(crashed_homes: dict[str, Path], embedder,
                                                                 where: str) -> None:
    home, user = crashed_homes[where], "crashy"
    with Memory(MemoryConfig(home=home), embedder=embedder, clock=ManualClock(utc(2024, 3, 1))) as mem:
        assert mem._journal.pending() == []  # recovery finished the interrupted turn
        assert_consistent(mem, user)
        texts = [e.text for e in mem.episodes(user)]
        if where == "after_chroma":  # never committed → fully absent
            assert texts == ["I live in Oslo"]
            assert objects(mem.profile(user), "lives_in") == {"Oslo"}
            assert all(i.current for i in mem.semantic.get(user))  # the supersede mark was undone
        else:  # committed → fully present
            assert texts == ["I live in Oslo", "I moved to Bergen"]
            assert objects(mem.profile(user), "lives_in") == {"Bergen"}
        rec = mem.recall(user, "where do I live")
        assert {e.text for e in rec.episodes} == set(texts)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("target", ["episodic.add", "semantic.add", "semantic.mark_superseded"])
def test_a_failing_chroma_write_raises_store_error_and_rolls_the_turn_back(
        mem: Memory, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    user = uid("failing")
    mem.remember(user, "I live in Lima")
    mem.remember(user, "I like chess")
    episodes, profile = mem.episodes(user), mem.profile(user)
    store_name, method = target.split(".")
    store = getattr(mem, store_name)
    real = getattr(store, method)

    def failing(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # the write happens, then the store reports a failure
        raise Boom("disk full")

    monkeypatch.setattr(store, method, failing)
    with pytest.raises(StoreError, match="rolled back"):
        mem.remember(user, "I moved to Quito")
    monkeypatch.undo()

    assert mem.episodes(user) == episodes
    assert mem.profile(user) == profile
    assert objects(mem.facts(user, include_superseded=True), "lives_in") == {"Lima"}
    assert mem._journal.pending() == []
    assert_consistent(mem, user)
    assert "I moved to Quito" not in [e.text for e in mem.recall(user, "Quito").episodes]
    mem.remember(user, "I moved to Quito")  # and the next attempt works
    assert objects(mem.profile(user), "lives_in") == {"Quito"}


# ------------------------------------------------------------------------------- 8. bad input

LONE_SURROGATE = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")
BAD_CALLS = {
    "empty text": ({"text": ""}, "empty"),
    "whitespace text": ({"text": "  \n\t "}, "empty"),
    "1 MB text": ({"text": "a" * 1_000_000}, "at most"),
    "lone surrogates": ({"text": LONE_SURROGATE}, "not valid Unicode"),
    "bytes not UTF-8": ({"text": b"caf\xe9 \xff"}, "not valid UTF-8"),
    "int text": ({"text": 42}, "must be a str"),
    "None text": ({"text": None}, "must be a str"),
    "None user": ({"user_id": None}, "user_id must be a str"),
    "empty user": ({"user_id": ""}, "user_id"),
    "user with spaces": ({"user_id": "bob smith"}, "user_id"),
    "path-like user": ({"user_id": "../etc/passwd"}, "user_id"),
    "overlong user": ({"user_id": "u" * 201}, "user_id"),
    "bad session": ({"session_id": "a/b"}, "session_id"),
    # ``$`` matches before a final newline: these passed a ``match(...$)`` check and were stored
    **{f"user {label}": ({"user_id": "bob" + tail}, "user_id 'bob.*' is not valid")
       for label, tail in (("ending in \\n", "\n"), ("ending in \\r", "\r"), ("ending in a space", " "),
                           ("with NUL", "\x00"))},
    **{f"session {label}": ({"session_id": "s1" + tail}, "session_id 's1.*' is not valid")
       for label, tail in (("ending in \\n", "\n"), ("ending in \\r", "\r"), ("ending in a space", " "),
                           ("with NUL", "\x00"))},
    "bad role": ({"role": "robot"}, "role"),
    "importance > 1": ({"importance": 2.0}, "importance"),
    "string time": ({"at": "yesterday"}, "datetime"),
}


@pytest.fixture(scope="module")
def veteran(mem: Memory) -> str:
    """A user with earlier memories that bad calls must leave intact."""
    user = uid("veteran")
    mem.remember(user, "I live in Perth")
    mem.remember(user, "I like chess")
    return user


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_bad_input_is_refused_clearly_and_nothing_is_written(mem: Memory, veteran: str, case: str) -> None:
    overrides, message = BAD_CALLS[case]
    call = {"user_id": veteran, "text": "I moved to Cairo", **overrides}
    before = (mem.episodes(veteran), mem.facts(veteran, include_superseded=True), mem.episodic.ids(veteran),
              mem.semantic.ids(veteran), mem.users())
    user, text = call.pop("user_id"), call.pop("text")
    with pytest.raises(InvalidInput, match=message):
        mem.remember(user, text, **call)
    after = (mem.episodes(veteran), mem.facts(veteran, include_superseded=True), mem.episodic.ids(veteran),
             mem.semantic.ids(veteran), mem.users())
    assert after == before


def test_accepted_input_is_normalized_as_documented(mem: Memory) -> None:
    user = uid("normal")
    stored = mem.remember(user, "I like\x00 te\x07a\x1b").episode
    assert stored.text == "I like tea"  # control characters are stripped
    assert objects(mem.profile(user), "likes") == {"tea"}
    assert mem.remember(user, "I like cocoa".encode()).episode.text == "I like cocoa"  # UTF-8 bytes are decoded
    naive = mem.remember(user, "naive time", at=datetime(2023, 5, 1, 12, 0)).episode
    aware = mem.remember(user, "aware time", at=datetime(2023, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))).episode
    assert naive.at == aware.at == utc(2023, 5, 1, 12, 0)  # naive is UTC; aware is converted
    assert [e.text for e in mem.episodes(user)][:2] == ["naive time", "aware time"]  # oldest first by event time


def test_an_unknown_user_is_empty_not_an_error_except_for_export(mem: Memory) -> None:
    ghost = uid("ghost")
    rec = mem.recall(ghost, "where do I live?")
    assert (rec.profile, rec.facts, rec.episodes) == ([], [], [])
    assert mem.profile(ghost) == [] and mem.episodes(ghost) == [] and mem.history(ghost, ghost, "lives_in") == []
    with pytest.raises(UnknownUser, match="no memories"):
        mem.export(ghost)
    assert set(mem.forget(ghost).values()) == {0}
    assert ghost not in mem.users()
    with pytest.raises(InvalidInput):
        mem.recall(ghost, "   ")
    with pytest.raises(InvalidInput):
        mem.forget("not a valid id!")


# ------------------------------------------------------------------------------------- 9. cap


def test_the_cap_evicts_weak_episodes_but_keeps_facts_summaries_and_recalled_turns(tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    config = MemoryConfig(home=tmp_path / "home", max_episodes_per_user=50)
    user = "capped"
    with Memory(config, embedder=embedder, clock=clock) as mem:
        early = [mem.remember(user, text, session_id="first").episode for text in (
            "I have a dog named Rex", "My favorite color is blue", "I work as a nurse",
            "The violin lesson went badly today", "I repaired the bicycle chain this morning",
            "The lighthouse tour was cancelled by the storm", "Grandma's soup recipe needs more thyme",
            "The quarterly tax form is due in April")]
        # Recalling a turn makes it more stable than its unrecalled peers of the same age.
        for query in ("violin lesson", "bicycle chain repair"):
            for _ in range(3):
                mem.recall(user, query, k=1)
        recalled = {early[3].id, early[4].id}
        for i in range(72):
            clock.advance(timedelta(hours=6))
            mem.remember(user, f"Daily note {i}: the weather was {['grey', 'sunny', 'windy'][i % 3]}",
                         session_id=f"day-{i // 8}")

        assert mem.indexed_count(user) <= 50
        assert len(mem.episodic.ids(user)) == mem.indexed_count(user)
        kept = set(mem.episodic.ids(user))
        assert recalled <= kept, "recalled turns were evicted before unrecalled turns of the same age"
        unrecalled_peers = {e.id for e in early[5:]}
        assert not unrecalled_peers & kept, "unrecalled early turns should be the first to go"
        profile = mem.profile(user)
        assert objects(profile, "has_pet") == {"Rex"} and objects(profile, "works_as") == {"nurse"}
        assert objects(profile, "favorite") == {"blue"}
        summaries = [i for i in mem.semantic.get(user) if i.kind == "summary"]
        assert summaries and any("violin" in s.text or "lighthouse" in s.text for s in summaries)
        # Evicted evidence of a fact stays in SQLite so the fact's history still points at its turn.
        assert early[0].id in {e.id for e in mem.episodes(user)}
        assert early[6].id not in {e.id for e in mem.episodes(user)}  # uncited and evicted: gone
        assert_consistent_after_cap(mem, user)


def assert_consistent_after_cap(mem: Memory, user: str) -> None:
    """After eviction Chroma holds exactly the SQLite episodes still marked as indexed."""
    assert set(mem.episodic.ids(user)) == mem.parts.episodes.indexed_ids(user)


# ------------------------------------------------------------------------------- embedding a turn once


class _Counting:
    """The real embedder, with the texts it was asked to embed written down."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.dim, self.name, self.texts = inner, inner.dim, inner.name, []

    def embed(self, texts: Any) -> Any:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def test_a_message_recalled_for_is_embedded_once_and_stored_with_that_vector(tmp_path: Path, embedder) -> None:
    counting = _Counting(embedder)
    with Memory(MemoryConfig(home=tmp_path / "home"), embedder=counting, clock=ManualClock(T0)) as mem:
        user, said = uid("once"), "I live in Quillborough and I work as a baker."
        mem.remember(user, "My dog is called Pip.")
        mem.recall(user, said)  # the agent's turn: recall for the message, reply, then remember it
        mem.remember(user, said)
        assert counting.texts.count(said) == 1, counting.texts
        # the new facts were still embedded, and the episode is found by its own text
        assert any("Quillborough" in t for t in counting.texts if t != said)
        hits = mem.recall(user, said).episodes
        assert hits and hits[0].text == said and "dense" in hits[0].sources
        assert {"Quillborough"} <= objects(mem.recall(user, "Where do I live?").facts, "lives_in")
        # a message remembered without a recall for it is embedded as before, and a vector serves one turn only
        mem.recall(user, "I bake bread.")
        mem.remember(user, "I bake bread.")
        counting.texts.clear()
        mem.remember(user, "I bake bread.")
        mem.remember(user, "I have a cat.")
        assert counting.texts.count("I bake bread.") == 1 and "I have a cat." in counting.texts
        # another user's identical message gets no vector recalled for someone else
        other = uid("other")
        mem.recall(user, "Hello there.")
        counting.texts.clear()
        mem.remember(other, "Hello there.")
        assert counting.texts == ["Hello there."]
