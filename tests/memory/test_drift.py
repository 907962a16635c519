"""Style drift: river detectors over each user's message statistics."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from memory.clock import ManualClock, utc
from memory.drift import DriftMonitor, formality_score, length_score
from memory.errors import InvalidInput

LONG = ("Thank you for the thorough answer yesterday. I would like to understand how the scheduler decides which "
        "job runs first when two of them are submitted at the same time, and whether the priority field I set is "
        "respected or overridden by the fair-share policy that the administrators mentioned in their note. {i}")
WORDS = "the a cat dog ran to our store I would like please thanks can't won't lol yeah however data model".split()


@pytest.fixture()
def monitor() -> DriftMonitor:
    return DriftMonitor(ManualClock(utc(2024, 1, 1)))


def test_long_then_two_word_messages_trigger_a_length_drift(monitor) -> None:
    before = [d for i in range(60) for d in monitor.observe("u1", LONG.format(i=i))]
    after = [d for i in range(60) for d in monitor.observe("u1", f"ok {i}")]
    assert before == []
    length = [d for d in after if d.statistic == "length"]
    assert length, "sixty 2-word messages after sixty 60-word ones must register as a length drift"
    assert length[0].user_id == "u1" and length[0].score < 0  # shorter
    assert monitor.drifts("u1") == after


def test_a_steady_user_does_not_drift(monitor) -> None:
    rng = random.Random(7)
    drifts = [d for _ in range(150)
              for d in monitor.observe("u1", " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))))]
    assert drifts == []


def test_a_switch_to_slang_is_a_formality_drift(monitor) -> None:
    for i in range(60):
        monitor.observe("u1", f"Dear assistant, could you please explain item {i}? Thank you, I would appreciate it.")
    drifts = [d for i in range(60) for d in monitor.observe("u1", f"lol yeah gonna try {i} thx, it's cool!!")]
    assert any(d.statistic == "formality" and d.score < 0 for d in drifts)


def test_users_are_independent_and_reset_forgets_state(monitor) -> None:
    for i in range(60):
        monitor.observe("a", LONG.format(i=i))
    # b's short messages are b's normal: no drift for b, whatever a did.
    assert [d for i in range(60) for d in monitor.observe("b", f"ok {i}")] == []
    monitor.reset("a")
    assert monitor.drifts("a") == []
    assert [d for i in range(60) for d in monitor.observe("a", f"ok {i}")] == []  # a fresh baseline


def test_prune_drops_idle_users() -> None:
    clock = ManualClock(utc(2024, 1, 1))
    monitor = DriftMonitor(clock)
    monitor.observe("old", "hello there")
    clock.advance(timedelta(days=40))
    monitor.observe("new", "hello there")
    assert monitor.prune(timedelta(days=30)) == 1
    assert monitor.drifts("old") == [] and monitor.prune(timedelta(days=30)) == 0


def test_statistics_and_bad_input(monitor) -> None:
    assert length_score("") == 0.0 and length_score("two words") > length_score("one")
    assert formality_score("Could you please help me? Thank you.") > 0 > formality_score("lol gonna do it, it's cool")
    with pytest.raises(InvalidInput):
        monitor.observe("", "text")
    with pytest.raises(InvalidInput):
        monitor.observe("u1", None)  # type: ignore[arg-type]
