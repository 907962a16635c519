"""Recall that knows what is newest, what is past, which period and whose words — through the real
``Memory`` (embedded Chroma, the real MiniLM embedder, the pattern extractor, the SQLite-backed graph).

One user's year: "I live in Porto", chatter (some about where to live), "I moved to Denver"; an omelette
question the assistant answered with a detail, the user's own omelette questions after it; four museum
visits months apart.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from memory.clock import ManualClock, utc
from memory.config import MemoryConfig
from memory.errors import InvalidInput
from memory.ranking import RankingWeights
from memory.records import FactSuperseded
from memory.service import Memory

USER = "ana"
T0 = utc(2025, 1, 6, 9)
TURNS = [  # (days after T0, role, text)
    (0, "user", "I live in Porto."),
    (2, "user", "What is a good neighbourhood to live in for a family?"),
    (2, "assistant", "Many families like to live near parks, good schools and public transport."),
    (5, "user", "Is it expensive to live downtown in a big city?"),
    (9, "user", "I started learning to play the guitar."),
    (20, "user", "How many eggs should I use for an omelette?"),
    (20, "assistant", "For one omelette use 3 eggs, whisked with a pinch of salt."),
    (25, "user", "I made an omelette for breakfast today."),
    (26, "user", "Are omelettes healthy to eat every day?"),
    (27, "user", "How many eggs are too many in an omelette?"),
    (40, "user", "I visited the Prado today, what a museum!"),
    (60, "user", "I moved to Denver."),
    (62, "user", "I love living close to the mountains."),
    (100, "user", "I visited the Louvre today, what a museum!"),
    (160, "user", "I visited the Rijksmuseum today, what a museum!"),
    (200, "user", "I visited the Uffizi today, what a museum!"),
]
ASKED = T0 + timedelta(days=203)  # the Louvre visit was about 103 days (three months) before


@pytest.fixture(scope="module")
def life(embedder, tmp_path_factory: pytest.TempPathFactory):  # -> (Memory, {text: episode id}, events)
    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=Path(tmp_path_factory.mktemp("intent"))), embedder=embedder, clock=clock) as mem:
        ids, events = {}, []
        for day, role, text in TURNS:
            clock.set(max(clock.now(), T0 + timedelta(days=day)))
            stored = mem.remember(USER, text, role=role, at=T0 + timedelta(days=day))
            ids[text] = stored.episode.id
            events += stored.events
        clock.set(ASKED)
        yield mem, ids, events


def _rank(mem: Memory, query: str) -> list[str]:
    return mem.recall(USER, query, k=10).episode_ids


def test_the_newest_value_outranks_the_superseded_one(life) -> None:
    mem, ids, events = life
    assert any(isinstance(e, FactSuperseded) and e.new.object == "Denver" for e in events)  # the graph saw the move
    for query in ("Where do I live?", "Which city do I live in?"):
        ranked = _rank(mem, query)
        denver, porto = ids["I moved to Denver."], ids["I live in Porto."]
        assert denver in ranked[:3], query
        assert porto not in ranked or ranked.index(porto) > ranked.index(denver), query


def test_the_turn_of_a_value_no_longer_true_is_marked_stale_only_for_a_present_question(life) -> None:
    mem, ids, _ = life
    now = mem.recall(USER, "Where do I live?", k=10)
    porto = ids["I live in Porto."]
    assert porto in now.stale_episode_ids and ids["I moved to Denver."] not in now.stale_episode_ids
    assert mem.recall(USER, "Where did I live before Denver?", k=10).stale_episode_ids == ()
    assert mem.recall(USER, "Which museum did I visit three months ago?", k=10).stale_episode_ids == ()


def test_a_question_about_the_past_still_finds_the_old_value(life) -> None:
    mem, ids, _ = life
    rec = mem.recall(USER, "Where did I live before Denver?", k=10)
    assert rec.intent.tense == "past"
    assert ids["I live in Porto."] in rec.episode_ids[:3]


def test_an_anchored_question_favours_the_turn_of_that_period(life) -> None:
    mem, ids, _ = life
    rec = mem.recall(USER, "Which museum did I visit three months ago?", k=10)
    assert rec.intent.window is not None and "time_anchored" in rec.intent.labels
    assert rec.episode_ids[0] == ids["I visited the Louvre today, what a museum!"]
    rec = mem.recall(USER, "Which museum did I visit in February?", k=10)
    assert rec.episode_ids[0] != ids["I visited the Uffizi today, what a museum!"]  # the newest is not the answer
    assert rec.episode_ids[0] == ids["I visited the Prado today, what a museum!"]


def test_the_assistants_detail_outranks_the_users_own_questions(life) -> None:
    mem, ids, _ = life
    rec = mem.recall(USER, "How many eggs did you say for the omelette?", k=10)
    assert rec.intent.about_assistant
    assert rec.episode_ids[0] == ids["For one omelette use 3 eggs, whisked with a pinch of salt."]


def test_without_intent_cues_the_assistant_turn_stays_behind_the_users_words(life) -> None:
    mem, ids, _ = life
    ranked = _rank(mem, "How many eggs should I use for an omelette?")
    assistant = ids["For one omelette use 3 eggs, whisked with a pinch of salt."]
    assert ranked[0] == ids["How many eggs should I use for an omelette?"]
    assert assistant not in ranked[:1]


def test_ranking_weights_reject_bad_values() -> None:
    with pytest.raises(InvalidInput, match=">= 0"):
        RankingWeights(newest=-1.0)
    with pytest.raises(InvalidInput, match="within"):
        RankingWeights(superseded=1.5)
