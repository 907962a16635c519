"""Style weights as a user sees them: what they say sets a weight, what they rate moves it (real spaCy, textstat,
embedder, Chroma, SQLite)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from memory import ManualClock, Memory, MemoryConfig, PreferenceDrift, utc
from memory.preferences import pole_sign, reply_scores

T0 = utc(2026, 1, 5, 9)
SHORT = ["Yes.", "Nine minutes.", "Try Lisbon.", "Green tea."]
LONG = ["Boil the egg for nine minutes: start it in cold water, bring the water to a boil, then let it simmer and "
        "cool it in iced water so that the shell comes off cleanly and the yolk stays bright.",
        "Lisbon is a good choice in spring: the weather is mild, the light is beautiful, the trams climb the old "
        "hills, and you can take a day trip to Sintra or to the beaches along the coast at Cascais.",
        "Green tea has less caffeine than coffee, so it suits the afternoon; brew it at about eighty degrees for "
        "two or three minutes, because boiling water makes it bitter and hides its grassy, sweet notes."]


def test_reply_scores_order_replies_along_each_dimension() -> None:
    short, long_ = reply_scores("Sure, nine minutes."), reply_scores(LONG[0])
    assert long_["verbosity"] > 3 * short["verbosity"]
    casual = reply_scores("hey, yeah it's fine, just do it, you'll love it lol")
    formal = reply_scores("The committee shall review the application in accordance with the regulations.")
    assert formal["formality"] > casual["formality"] + 20
    simple = reply_scores("Cats sleep a lot. They like the sun.")
    expert = reply_scores("Quantum chromodynamics describes the strong interaction between quarks and gluons.")
    assert expert["expertise"] > simple["expertise"] + 8
    with pytest.raises(ValueError, match="poles"):
        pole_sign("verbosity", "formal")


def _replies(mem: Memory, clock: ManualClock, user: str, texts: list[str]) -> list[str]:
    ids = []
    for text in texts:
        clock.advance(timedelta(minutes=1))
        mem.remember(user, "Tell me more.")
        ids.append(mem.remember(user, text, role="assistant").episode.id)
    return ids


def test_statements_set_the_weight_per_user_and_a_reversal_is_a_drift(tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        mem.remember("ann", "Keep it short, please.")
        mem.remember("bob", "No need to be formal with me.")
        ann, bob = mem.preference_weights("ann"), mem.preference_weights("bob")
        assert (ann["verbosity"].weight, ann["verbosity"].pole) == (-1.0, "concise")
        assert ann["formality"].weight == 0 and ann["formality"].pole is None
        assert (bob["formality"].weight, bob["verbosity"].weight) == (-1.0, 0.0)

        clock.advance(timedelta(days=30))
        events = mem.remember("ann", "Actually, more detail please.").events
        drift = [e for e in events if isinstance(e, PreferenceDrift)]
        assert [(d.dimension, d.before, d.after) for d in drift] == [("verbosity", "concise", "detailed")]
        assert mem.preference_weights("ann")["verbosity"].weight == 1.0
        assert mem.preference_weights("ann", as_of=T0 + timedelta(days=1))["verbosity"].weight == -1.0  # history


def test_ratings_move_a_weight_and_a_turn_to_the_other_pole_is_a_drift(tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        short = _replies(mem, clock, "cy", SHORT)
        long_ = _replies(mem, clock, "cy", LONG)
        assert mem.preference_weights("cy")["verbosity"].weight == 0  # nothing said, nothing rated

        first = mem.rate("cy", long_[0], 1)
        assert [(e.dimension, e.before) for e in first.events if e.dimension == "verbosity"] == [("verbosity", 0.0)]
        for i in long_[1:]:
            mem.rate("cy", i, 1)
        for i in short:
            mem.rate("cy", i, -1)
        w = mem.preference_weights("cy")["verbosity"]
        assert 0.3 < w.weight <= 0.5 and w.pole == "detailed" and w.ratings == 7 and w.statement == 0

        clock.advance(timedelta(hours=1))
        rerated = [mem.rate("cy", i, -1) for i in long_] + [mem.rate("cy", i, 1) for i in short]  # she changed her mind
        turned = [e for r in rerated for e in r.events if e.dimension == "verbosity"]
        assert len(turned) == 1 and turned[0].before >= 0 > turned[0].after  # the weight turned, once
        assert mem.preference_weights("cy")["verbosity"].pole == "concise"
        assert mem.preference_weights("cy", as_of=T0 + timedelta(minutes=30))["verbosity"].pole == "detailed"


def test_a_statement_resets_the_dimension_and_later_ratings_nudge_it(tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        short = _replies(mem, clock, "dee", SHORT)
        long_ = _replies(mem, clock, "dee", LONG)
        for i in short:  # before the statement: liked short replies
            mem.rate("dee", i, 1)
        clock.advance(timedelta(days=1))
        mem.remember("dee", "Give me more detail from now on.")
        assert mem.preference_weights("dee")["verbosity"].weight == 1.0  # earlier ratings do not count
        clock.advance(timedelta(minutes=5))
        mem.rate("dee", long_[0], -1)  # after it: a long reply disliked pulls the weight back a little
        w = mem.preference_weights("dee")["verbosity"]
        assert 0.5 <= w.weight < 1.0 and w.statement == 1.0 and w.ratings == 1


def test_the_feedback_detector_fires_when_taste_turns_and_not_on_a_steady_stream() -> None:
    import random

    from memory.preferences import FeedbackDriftMonitor

    rng = random.Random(0)
    monitor = FeedbackDriftMonitor()
    steady = [monitor.observe("ann", {"verbosity": 0.8 + rng.gauss(0, 0.4)}) for _ in range(60)]
    assert not any(steady)
    turned = [monitor.observe("ann", {"verbosity": -0.8 + rng.gauss(0, 0.4)}) for _ in range(30)]
    first = next(i for i, f in enumerate(turned) if f)
    assert turned[first] == ["verbosity"] and first < 15  # caught within a few ratings of the change
    assert monitor.observe("bob", {"verbosity": -0.8}) == []  # per user
    monitor.reset("ann")
    assert monitor.observe("ann", {"verbosity": 0.8}) == []


def test_a_rating_reports_the_signal_it_carries(tmp_path: Path, embedder) -> None:
    from memory.preferences import rating_signals

    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        short = _replies(mem, clock, "eve", SHORT)
        long_ = _replies(mem, clock, "eve", LONG)
        liked_long = mem.rate("eve", long_[0], 1).feedback
        signals = rating_signals(liked_long, mem.episodes("eve"), mem.feedback("eve"))
        assert signals["verbosity"] > 0.5  # liking a long reply says "more verbose"
        disliked_short = mem.rate("eve", short[0], -1).feedback
        assert rating_signals(disliked_short, mem.episodes("eve"), mem.feedback("eve"))["verbosity"] > 0.5
