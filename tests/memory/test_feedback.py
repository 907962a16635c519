"""Ratings of the assistant's replies, as a user and an operator see them: real embedder, Chroma, SQLite.

A rating is stored with its history (the newest counts), refused with a clear message when it names no
reply of the user (nothing stored), kept when the episode cap evicts its reply from the search index,
carried by export/import (under a new id too) and erased by forget.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from memory import InvalidInput, ManualClock, Memory, MemoryConfig, utc
from memory.feedback import current_ratings

T0 = utc(2024, 3, 1, 9, 0)


def _chat(mem: Memory, user: str, said: str, reply: str) -> str:
    mem.remember(user, said, session_id="s1")
    return mem.remember(user, reply, role="assistant", session_id="s1").episode.id


def test_ratings_keep_their_history_and_the_newest_counts(tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        first = _chat(mem, "ann", "How do I boil an egg?", "Boil it for nine minutes.")
        second = _chat(mem, "ann", "And a soft one?", "Six minutes, then cold water.")
        mem.rate("ann", first, 1)
        clock.advance(timedelta(minutes=1))
        mem.rate("ann", second, 1)
        clock.advance(timedelta(minutes=1))
        mem.rate("ann", first, -1)  # changed her mind

        history = mem.feedback("ann")
        assert [(f.episode_id, f.value) for f in history] == [(first, 1), (second, 1), (first, -1)]
        assert {e: f.value for e, f in current_ratings(history).items()} == {first: -1, second: 1}
        assert mem.feedback("bob") == []


@pytest.mark.parametrize("case", ["zero", "two", "true", "unknown id", "user turn", "another user's reply", "blank"])
def test_a_bad_rating_is_refused_and_stores_nothing(tmp_path: Path, embedder, case: str) -> None:
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=ManualClock(T0)) as mem:
        reply = _chat(mem, "ann", "Any tips for Lisbon?", "Take tram 28 early in the morning.")
        bobs = _chat(mem, "bob", "Hi", "Hello Bob.")
        mem.rate("ann", reply, 1)
        before = mem.feedback("ann")
        said = next(e.id for e in mem.episodes("ann") if e.role == "user")
        episode, value, message = {
            "zero": (reply, 0, r"1 \(liked\) or -1"), "two": (reply, 2, r"1 \(liked\) or -1"),
            "true": (reply, True, r"1 \(liked\) or -1"), "unknown id": ("ep_nope", 1, "no stored episode"),
            "user turn": (said, 1, "only the assistant's replies"), "another user's reply": (bobs, 1, "no stored episode"),
            "blank": ("  ", 1, "episode_id must be"),
        }[case]
        with pytest.raises(InvalidInput, match=message):
            mem.rate("ann", episode, value)
        assert mem.feedback("ann") == before and mem.feedback("bob") == []


def test_a_rated_reply_outlives_eviction_from_the_search_index(tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    config = MemoryConfig(home=tmp_path, max_episodes_per_user=6)
    with Memory(config, embedder=embedder, clock=clock) as mem:
        liked = _chat(mem, "ann", "Suggest a short poem.", "The fog comes on little cat feet.")
        plain = _chat(mem, "ann", "Another one?", "So much depends upon a red wheel barrow.")
        mem.rate("ann", liked, 1)
        for i in range(8):  # pushes the oldest turns out of the index
            clock.advance(timedelta(days=3))
            mem.remember("ann", f"Filler turn number {i} about the weather", session_id="s2")
        indexed = set(mem.episodic.ids("ann"))
        kept = {e.id for e in mem.episodes("ann")}
        assert liked not in indexed and plain not in indexed  # both evicted from search
        assert liked in kept and plain not in kept  # the rated one is still training data
        assert [f.episode_id for f in mem.feedback("ann")] == [liked]


def test_export_import_carries_ratings_and_forget_erases_them(tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        reply = _chat(mem, "ann", "I live in Oslo. Any museum?", "The Munch museum by the fjord.")
        mem.rate("ann", reply, 1)
        doc = json.loads(json.dumps(mem.export("ann")))
        assert [(f["episode_id"], f["value"]) for f in doc["feedback"]] == [(reply, 1)]

        mem.import_(doc, user_id="ann2")  # beside the original: fresh ids, the rating follows its reply
        copied = mem.feedback("ann2")
        replies = {e.id: e.text for e in mem.episodes("ann2") if e.role == "assistant"}
        assert len(copied) == 1 and copied[0].episode_id != reply
        assert replies[copied[0].episode_id] == "The Munch museum by the fjord."
        assert copied[0].at == mem.feedback("ann")[0].at

        bad = json.loads(json.dumps(doc))
        bad["feedback"][0]["episode_id"] = next(e["id"] for e in bad["episodes"] if e["role"] == "user")
        with pytest.raises(InvalidInput, match=r"feedback #0.*not an assistant reply"):
            mem.import_(bad, user_id="ann3")
        assert not mem.has_user("ann3")

        removed = mem.forget("ann")
        assert removed["feedback"] == 1 and mem.feedback("ann") == []
        assert len(mem.feedback("ann2")) == 1  # the copy is another user
        mem.import_(doc)  # the round trip is exact
        assert [(f.id, f.episode_id, f.value) for f in mem.feedback("ann")] == [
            (d["id"], d["episode_id"], d["value"]) for d in doc["feedback"]]


def test_a_read_only_memory_sees_ratings_and_refuses_to_rate(tmp_path: Path, embedder) -> None:
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=ManualClock(T0)) as mem:
        reply = _chat(mem, "ann", "Tea or coffee?", "Green tea, in the afternoon.")
        mem.rate("ann", reply, 1)
        with Memory(MemoryConfig(home=tmp_path), embedder=embedder, read_only=True) as reader:
            assert [f.episode_id for f in reader.feedback("ann")] == [reply]
            with pytest.raises(Exception, match="read-only"):
                reader.rate("ann", reply, -1)
