"""Time expressions, query intents and update evidence, read against a fixed question date (Thursday
3 December 2026)."""

from __future__ import annotations

from datetime import datetime

import pytest

from memory.clock import utc
from memory.errors import InvalidInput
from memory.query_intent import classify_query
from memory.ranking import update_evidence
from memory.records import Fact
from memory.time_anchor import time_window

REF = utc(2026, 12, 3, 10)


def _day(value: datetime) -> str:
    return value.date().isoformat()


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("what did I do yesterday?", "2026-12-02", "2026-12-03"),
        ("something I said the day before yesterday", "2026-12-01", "2026-12-02"),
        ("the museum I mentioned two months ago", "2026-09-18", "2026-10-18"),
        ("what did I say last spring", "2026-03-01", "2026-06-01"),
        ("where did I go last summer", "2026-06-01", "2026-09-01"),
        ("last winter was cold", "2025-12-01", "2026-03-01"),
        ("the book from last week", "2026-11-23", "2026-11-30"),
        ("my plans last month", "2026-11-01", "2026-12-01"),
        ("a trip last year", "2025-01-01", "2026-01-01"),
        ("what did I cook in March?", "2026-03-01", "2026-04-01"),
        ("the dinner on May 3", "2026-05-03", "2026-05-04"),
        ("the party on 4th of July", "2026-07-04", "2026-07-05"),
        ("what happened on May 3rd, 2024", "2024-05-03", "2024-05-04"),
        ("the concert in 2023", "2023-01-01", "2024-01-01"),
        ("a place I mentioned a few weeks ago", "2026-10-25", "2026-11-23"),
        ("something I started earlier this year", "2026-01-01", "2026-12-03"),
        ("the hike last Monday", "2026-11-30", "2026-12-01"),
        ("a film I saw 3 days ago", "2026-11-29", "2026-12-01"),
    ],
)
def test_expressions_map_to_the_period_they_name(text: str, start: str, end: str) -> None:
    window = time_window(text, REF)
    assert window is not None, text
    assert (_day(window.start), _day(window.end)) == (start, end)
    assert window.phrase.casefold() in text.casefold()


def test_a_month_not_yet_reached_this_year_means_last_year() -> None:
    window = time_window("the trip in December", utc(2026, 6, 1))
    assert window is not None and window.start == utc(2025, 12, 1) and window.end == utc(2026, 1, 1)


def test_text_without_a_time_expression_names_no_period() -> None:
    for text in ("where do I live?", "I may 3D-print a vase", "how many eggs did you say?", "my favorite season"):
        assert time_window(text, REF) is None, text


def test_a_window_tells_inside_from_outside() -> None:
    window = time_window("last week", REF)
    assert window is not None
    assert utc(2026, 11, 25, 12) in window and utc(2026, 11, 30) not in window
    assert window.distance(utc(2026, 11, 20)).days == 3


def test_bad_input_raises_a_pllm_error() -> None:
    with pytest.raises(InvalidInput, match="not a date"):
        time_window("the party on February 30", REF)
    with pytest.raises(InvalidInput, match="reference must be a datetime"):
        time_window("yesterday", "2026-12-03")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "labels"),
    [
        ("Where do I live?", ("current",)),
        ("What's my favourite food these days?", ("current",)),
        ("Where did I live before Denver?", ("past",)),
        ("Which company did I use to work for?", ("past",)),
        ("What was my previous job?", ("past",)),
        ("Which museum did I mention two months ago?", ("current", "time_anchored")),
        ("How many eggs did you say for the omelette?", ("current", "assistant")),
        ("What book did you recommend last week?", ("current", "time_anchored", "assistant")),
        ("Did I tell you my name?", ("current",)),
        # a time that names the present or the future is not a period of the past to favour
        ("Can you recommend some restaurants in Lisbon for dinner tonight?", ("current",)),
        ("What should I cook today?", ("current",)),
        ("Any plans for this summer?", ("current",)),
        ("What did I say this morning?", ("current", "time_anchored")),
        ("Which film did we talk about on Tuesday?", ("current", "time_anchored")),
    ],
)
def test_queries_are_classified_by_what_they_ask_for(query: str, labels: tuple[str, ...]) -> None:
    assert classify_query(query, REF).labels == labels


def _lives(city: str, start: datetime, end: datetime | None, episode: str) -> Fact:
    return Fact(user_id="u", subject="u", relation="lives_in", object=city, valid_from=start, recorded_at=start,
                valid_to=end, source_episode_ids=(episode,))


def test_update_evidence_is_split_by_what_is_true_in_the_period_asked_about() -> None:
    moved = utc(2026, 6, 1)
    facts = [_lives("Porto", utc(2025, 1, 1), moved, "ep_porto"), _lives("Denver", moved, None, "ep_denver")]
    now = update_evidence("Where do I live?", facts)
    assert (now.newest, now.superseded) == ({"ep_denver"}, {"ep_porto"})
    named = update_evidence("Tell me about Denver", facts)  # naming a value makes the slot the question's
    assert named.newest == {"ep_denver"}
    then = update_evidence("Where was I living last year?", facts, window=time_window("last year", REF))
    assert (then.newest, then.superseded) == ({"ep_porto"}, {"ep_denver"})
    assert update_evidence("What's my favourite colour?", facts).episode_ids == []  # another topic: untouched
