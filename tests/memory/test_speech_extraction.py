"""The default extractor on ordinary speech: real spaCy parse, real patterns, real Memory.

What a user notices: "Big news: I moved to Denver last week." moves them to Denver like the plain
sentence does; "These days my favorite food is tacos, not pizza." replaces pizza; questions, other
people's facts and hypotheticals change nothing; a personal statement that yields no fact says so in
the log.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any, Iterator

import pytest

from memory import ManualClock, Memory, MemoryConfig, utc
from memory.extraction import PatternExtractor, SpeechExtractor, default_extractor

T0 = utc(2024, 3, 1, 9, 0)


@pytest.fixture(scope="module")
def speech() -> SpeechExtractor:
    return SpeechExtractor()


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(scope="module")
def mem(tmp_path_factory: pytest.TempPathFactory, embedder: Any, clock: ManualClock) -> Iterator[Memory]:
    with Memory(MemoryConfig(home=tmp_path_factory.mktemp("speech-home")), embedder=embedder, clock=clock) as memory:
        yield memory


def uid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def current(mem: Memory, user: str, relation: str) -> set[str]:
    return {f.object for f in mem.facts(user) if f.relation == relation}


def edges(speech: SpeechExtractor, text: str) -> set[tuple[str, str, str | None, bool]]:
    return {(c.relation, c.object, c.category, c.negated) for c in speech.extract(text) if c.subject == "user"}


def test_the_default_extractor_is_the_speech_extractor(mem: Memory) -> None:
    assert isinstance(default_extractor(), SpeechExtractor)
    assert isinstance(mem.extractor, SpeechExtractor)


# ------------------------------------------------------------------ the issue's phrasings, end to end


def test_big_news_move_supersedes_the_old_city(mem: Memory, clock: ManualClock) -> None:
    user = uid("mover")
    mem.remember(user, "I live in Boston.")
    clock.advance(timedelta(days=10))
    mem.remember(user, "Big news: I moved to Denver last week.")
    assert current(mem, user, "lives_in") == {"Denver"}
    assert [h.fact.object for h in mem.history(user, user, "lives_in") if h.op == "supersede"] == ["Boston"]


def test_these_days_favorite_x_not_y_supersedes_the_old_favorite(mem: Memory, clock: ManualClock) -> None:
    user = uid("foodie")
    mem.remember(user, "My favorite food is pizza.")
    clock.advance(timedelta(days=10))
    mem.remember(user, "These days my favorite food is tacos, not pizza.")
    favorites = {(f.category, f.object) for f in mem.facts(user) if f.relation == "favorite"}
    assert favorites == {("food", "tacos")}
    assert "pizza" in {h.fact.object for h in mem.history(user, user, "favorite", category="food")}


def test_two_clauses_in_one_message_give_both_facts(mem: Memory) -> None:
    user = uid("nurse")
    mem.remember(user, "I moved to Denver and I started working as a nurse")
    assert current(mem, user, "lives_in") == {"Denver"}
    assert current(mem, user, "works_as") == {"nurse"}


def test_no_longer_closes_the_fact(mem: Memory, clock: ManualClock) -> None:
    user = uid("leaver")
    mem.remember(user, "I live in Oslo")
    clock.advance(timedelta(days=3))
    mem.remember(user, "Honestly, I no longer live in Oslo.")
    assert current(mem, user, "lives_in") == set()


def test_the_pattern_extractor_alone_misses_the_issue_phrasings() -> None:
    """The regression the issue reported: the baseline still yields nothing, the default does not."""
    patterns = PatternExtractor()
    assert patterns.extract("These days my favorite food is tacos, not pizza.") == []
    assert not any(c.relation == "lives_in" for c in patterns.extract("Big news: we moved to Denver last week."))


# ------------------------------------------------------------------ phrasings, extractor level


@pytest.mark.parametrize("text, expected", [
    ("Big news: I moved to Denver last week.", ("lives_in", "Denver", None, False)),
    ("Anyway, I've been living in Denver for two years.", ("lives_in", "Denver", None, False)),
    ("We moved to Denver last month.", ("lives_in", "Denver", None, False)),
    ("So yeah, I am a nurse now.", ("works_as", "nurse", None, False)),
    ("These days my favorite food is tacos.", ("favorite", "tacos", "food", False)),
    ("I'm really into hiking these days.", ("likes", "hiking", None, False)),
    ("I can't stand cilantro.", ("dislikes", "cilantro", None, False)),
    ("I don't live in Oslo anymore.", ("lives_in", "Oslo", None, True)),
    ("I'm no longer vegetarian.", ("diet", "vegetarian", None, True)),
    # style requests as people make them (the objective-level issue's examples); a bare "no" governs them
    ("Keep it short.", ("prefers_verbosity", "concise", None, False)),
    ("More detail please.", ("prefers_verbosity", "detailed", None, False)),
    ("No more detail, please.", ("prefers_verbosity", "concise", None, False)),
    ("No need to be formal.", ("prefers_formality", "casual", None, False)),
    ("You don't have to be so formal with me.", ("prefers_formality", "casual", None, False)),
    ("No, I live in Oslo.", ("lives_in", "Oslo", None, False)),
    # PrefEval-style statements the bench showed the patterns missing
    ("I strictly avoid restaurants that serve foods containing gluten.", ("dislikes", "restaurants", None, False)),
    ("I have a strong aversion to cold weather sports.", ("dislikes", "cold weather sports", None, False)),
    ("I prefer not to dine at rooftop locations.", ("dislikes", "dine at rooftop locations", None, False)),
    ("I am not interested in sci-fi games.", ("dislikes", "sci-fi games", None, False)),
    ("I find flashcards ineffective.", ("dislikes", "flashcards", None, False)),
    ("I have no interest in watching period dramas.", ("dislikes", "watching period dramas", None, False)),
    ("Due to motion sickness, I steer clear of athletic activities.", ("dislikes", "athletic activities", None, False)),
    ("I am not a fan of high-speed activities such as car racing.", ("dislikes", "high-speed activities", None, False)),
])
def test_ordinary_phrasings(speech: SpeechExtractor, text: str, expected: tuple) -> None:
    assert expected in edges(speech, text)


def test_x_not_y_names_what_it_replaces(speech: SpeechExtractor) -> None:
    [tea] = [c for c in speech.extract("Honestly, I drink tea instead of coffee now.") if c.relation == "likes"]
    assert (tea.object, tea.replaces) == ("tea", "coffee")
    [tacos] = speech.extract("My favorite food is tacos, not pizza.")
    assert (tacos.object, tacos.replaces) == ("tacos", "pizza")


@pytest.mark.parametrize("text", [
    "Do you like tacos?",
    "Where do I live again?",
    "If I lived in Paris I would be happy.",
    "My friend said she lives in Rome.",
])
def test_questions_hypotheticals_and_reported_speech_give_no_facts(speech: SpeechExtractor, text: str) -> None:
    assert speech.extract(text) == []


def test_a_third_party_is_not_the_user(speech: SpeechExtractor) -> None:
    found = edges(speech, "My sister lives in Rome.")
    assert not any(rel == "lives_in" for rel, *_ in found)


@pytest.mark.parametrize("text, expected", [
    ("I live with my partner Anna.", ("partner", "Anna", "partner", False)),
    ("My partner is Anna.", ("partner", "Anna", "partner", False)),
    ("My girlfriend is called Mia.", ("partner", "Mia", "girlfriend", False)),
    ("Anna is my wife.", ("partner", "Anna", "wife", False)),
    ("I live with my husband Marco.", ("partner", "Marco", "husband", False)),
    ("My partner's name is Sam.", ("partner", "Sam", "partner", False)),
    ("This is my wife, Anna.", ("partner", "Anna", "wife", False)),
    ("I went hiking with my brother Tom yesterday.", ("has_sibling", "Tom", "brother", False)),
    ("Our daughter Emma just turned 5.", ("has_child", "Emma", "daughter", False)),
])
def test_a_person_named_by_role_anywhere_in_the_sentence(speech: SpeechExtractor, text: str,
                                                          expected: tuple) -> None:
    assert expected in edges(speech, text)


@pytest.mark.parametrize("text", ["Anna is not my wife.", "My ex-wife Anna lives in Rome.", "My boyfriend is German."])
def test_no_partner_from_a_denial_a_former_partner_or_a_nationality(speech: SpeechExtractor, text: str) -> None:
    assert not any(rel == "partner" for rel, *_ in edges(speech, text))


def test_a_named_third_party_keeps_their_own_job(speech: SpeechExtractor) -> None:
    found = {(c.subject, c.relation, c.object) for c in speech.extract("My wife Anna is a doctor.")}
    assert found == {("user", "partner", "Anna"), ("Anna", "works_as", "doctor")}


@pytest.mark.parametrize("text", [
    "My wife Anna is a doctor.",
    "My husband works as a chef.",
    "My brother lives in Rome and works as a chef.",
    "My wife loves hiking.",
    "My dog loves the park.",
    "My mom was interested in art.",
    "She is a doctor and lives in Rome.",
])
def test_a_clause_about_someone_else_gives_the_user_no_facts_of_their_own(speech: SpeechExtractor,
                                                                          text: str) -> None:
    about_user = {rel for rel, *_ in edges(speech, text)}
    assert not about_user & {"works_as", "works_at", "lives_in", "likes", "dislikes"}


def test_my_partner_and_i_is_still_the_user(speech: SpeechExtractor) -> None:
    assert ("lives_in", "Rome", None, False) in edges(speech, "My wife and I live in Rome.")


@pytest.mark.parametrize("text", ["I'm a carpenter by profession.", "I'm a carpenter by trade.",
                                  "I work as a carpenter for a living."])
def test_a_job_without_by_profession(speech: SpeechExtractor, text: str) -> None:
    assert {obj for rel, obj, *_ in edges(speech, text) if rel.startswith("works_")} == {"carpenter"}


def test_reading_something_is_not_liking_it(speech: SpeechExtractor) -> None:
    assert edges(speech, "I read an interesting article about space.") == set()
    assert ("likes", "badminton", None, False) in edges(speech, "I love badminton, I do it every weekend.")
    assert ("likes", "hiking", None, False) in edges(speech, "I really enjoy hiking.")
    assert ("likes", "sci-fi novels", None, False) in edges(speech, "I read sci-fi novels.")


def test_assistant_turns_give_nothing(speech: SpeechExtractor) -> None:
    assert speech.extract("I live in Oslo.", role="assistant") == []


# ------------------------------------------------------------------ a statement that yields nothing is logged


def test_a_personal_statement_without_a_fact_is_logged(speech: SpeechExtractor,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="memory.extraction.speech"):
        assert speech.extract("I moved somewhere nicer with a view.") == []
    assert "no fact extracted from personal statement" in caplog.text
    assert "somewhere nicer" in caplog.text


def test_questions_and_facts_are_not_logged(speech: SpeechExtractor, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="memory.extraction.speech"):
        speech.extract("Do you live in Oslo?")
        speech.extract("I live in Oslo.")
    assert "no fact extracted" not in caplog.text
