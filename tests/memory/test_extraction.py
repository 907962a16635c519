"""Extraction: the pattern extractor on a table of statements, and the LLM extractor's parser."""

from __future__ import annotations

import time

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda

from memory.clock import ManualClock, utc
from memory.extraction import Candidate, Extractor, LLMExtractor, PatternExtractor
from memory.extraction.llm import ExtractedItem, ExtractionResult, extraction_prompt, parse_items
from memory.graph import KnowledgeGraph

U = "user"

# statement → exactly the candidates expected, as (subject, relation, object, category, negated)
CASES: list[tuple[str, set[tuple]]] = [
    # identity
    ("I'm Sam", {(U, "name", "Sam", None, False)}),
    ("my name is sam", {(U, "name", "Sam", None, False)}),
    ("Call me Alex.", {(U, "name", "Alex", None, False)}),
    ("Hi! My name's Maria Lopez, nice to meet you", {(U, "name", "Maria Lopez", None, False)}),
    ("I'm 34", {(U, "age", "34", None, False)}),
    ("I am 34 years old.", {(U, "age", "34", None, False)}),
    ("I just turned 40!", {(U, "age", "40", None, False)}),
    # places
    ("I live in Oslo", {(U, "lives_in", "Oslo", None, False)}),
    ("I moved to Bergen last year", {(U, "lives_in", "Bergen", None, False)}),
    ("I just relocated to Trondheim.", {(U, "lives_in", "Trondheim", None, False)}),
    ("I'm based in Berlin these days", {(U, "lives_in", "Berlin", None, False)}),
    ("I've been living in Lisbon for three years", {(U, "lives_in", "Lisbon", None, False)}),
    ("I live in Oslo with my wife", {(U, "lives_in", "Oslo", None, False)}),
    ("I'm from Norway", {(U, "from", "Norway", None, False)}),
    ("I grew up in Rome", {(U, "from", "Rome", None, False)}),
    ("I was born in New York City", {(U, "from", "New York City", None, False)}),
    # work and study
    ("I'm a nurse", {(U, "works_as", "nurse", None, False)}),
    ("I work as a teacher", {(U, "works_as", "teacher", None, False)}),
    ("I'm a software engineer at Spotify", {(U, "works_as", "software engineer", None, False),
                                             (U, "works_at", "Spotify", None, False)}),
    ("I work at Google", {(U, "works_at", "Google", None, False)}),
    ("I work for the city council", {(U, "works_at", "city council", None, False)}),
    ("I study physics", {(U, "studies", "physics", None, False)}),
    ("I'm studying law at Oxford", {(U, "studies", "law", None, False), (U, "studies_at", "Oxford", None, False)}),
    ("I'm a history student", {(U, "studies", "history", None, False)}),
    ("I'm a carpenter by profession.", {(U, "works_as", "carpenter", None, False)}),
    ("I'm an electrician by trade", {(U, "works_as", "electrician", None, False)}),
    ("I work as a nurse for a living", {(U, "works_as", "nurse", None, False)}),
    ("I started a new job as a Financial Analyst", {(U, "works_as", "Financial Analyst", None, False)}),
    # likes and dislikes
    ("I love sushi", {(U, "likes", "sushi", None, False)}),
    ("I really enjoy hiking in the mountains", {(U, "likes", "hiking in the mountains", None, False)}),
    ("I adore cats and dogs", {(U, "likes", "cats", None, False)}),
    ("I like to cook", {(U, "likes", "cooking", None, False)}),
    ("I drink espresso every morning", {(U, "likes", "espresso", None, False)}),
    ("I eat a lot of vegetables", {(U, "likes", "vegetables", None, False)}),
    ("I read an interesting article about space.", set()),  # one occasion, not a habit or a liking
    ("I watch a documentary", set()),
    ("I'm into rock climbing", {(U, "likes", "rock climbing", None, False)}),
    ("I'm a huge fan of jazz", {(U, "likes", "jazz", None, False)}),
    ("I hate cilantro", {(U, "dislikes", "cilantro", None, False)}),
    ("I can't stand reality TV", {(U, "dislikes", "reality TV", None, False)}),
    ("I don't like mushrooms", {(U, "dislikes", "mushrooms", None, False)}),
    ("I'm not a fan of horror movies", {(U, "dislikes", "horror movies", None, False)}),
    # favorites (category normalized: British spelling, singular)
    ("my favorite food is sushi", {(U, "favorite", "sushi", "food", False)}),
    ("My favourite colour is blue.", {(U, "favorite", "blue", "color", False)}),
    ("My favorite movies are the Godfather films", {(U, "favorite", "Godfather films", "movie", False)}),
    ("Pizza is my favorite food", {(U, "favorite", "Pizza", "food", False)}),
    # health and diet
    ("I'm allergic to peanuts", {(U, "allergic_to", "peanuts", None, False)}),
    ("I have a severe shellfish allergy", {(U, "allergic_to", "shellfish", None, False)}),
    ("I'm vegetarian", {(U, "diet", "vegetarian", None, False)}),
    ("I became vegan last month", {(U, "diet", "vegan", None, False)}),
    ("I follow a strict keto diet", {(U, "diet", "keto", None, False)}),
    ("I don't eat meat any more", {(U, "diet", "vegetarian", None, False), (U, "likes", "meat", None, True)}),
    # pets, family, people
    ("I have a dog named Rex", {(U, "has_pet", "Rex", "dog", False)}),
    ("I have two cats", {(U, "has_pet", "two cats", "cat", False)}),
    ("I have two cats named Tom and Jerry", {(U, "has_pet", "Tom", "cat", False),
                                             (U, "has_pet", "Jerry", "cat", False)}),
    ("My dog Bella is sick", {(U, "has_pet", "Bella", "dog", False)}),
    ("I adopted another puppy called Pixie", {(U, "has_pet", "Pixie", "puppy", False)}),
    ("my sister Anna lives in Berlin", {(U, "has_sibling", "Anna", "sister", False),
                                        ("Anna", "lives_in", "Berlin", None, False)}),
    ("My brother Tom is a doctor", {(U, "has_sibling", "Tom", "brother", False),
                                    ("Tom", "works_as", "doctor", None, False)}),
    ("my wife is called Maria", {(U, "partner", "Maria", "wife", False)}),
    ("My husband Tom loves fishing", {(U, "partner", "Tom", "husband", False),
                                      ("Tom", "likes", "fishing", None, False)}),
    ("I have a son", {(U, "has_child", "son", "son", False)}),
    ("I have two daughters named Ella and Mia", {(U, "has_child", "Ella", "daughter", False),
                                                 (U, "has_child", "Mia", "daughter", False)}),
    ("I'm married to Chris", {(U, "partner", "Chris", "spouse", False)}),
    # plans and goals
    ("I'm planning to visit Japan next spring", {(U, "plans", "visit Japan", None, False)}),
    ("I want to run a marathon", {(U, "goal", "run a marathon", None, False)}),
    ("I'm learning Spanish", {(U, "goal", "learn Spanish", None, False)}),
    ("I'm moving to Madrid in May", {(U, "plans", "move to Madrid", None, False)}),
    # style preferences (requests count even when phrased as questions)
    ("Keep your answers short, please", {(U, "prefers_verbosity", "concise", None, False)}),
    ("Could you be more concise?", {(U, "prefers_verbosity", "concise", None, False)}),
    ("Give me more detail", {(U, "prefers_verbosity", "detailed", None, False)}),
    ("Please explain it in depth", {(U, "prefers_verbosity", "detailed", None, False)}),
    ("Be more formal with me", {(U, "prefers_formality", "formal", None, False)}),
    ("casual is fine", {(U, "prefers_formality", "casual", None, False)}),
    ("I'm a complete beginner", {(U, "prefers_expertise", "layperson", None, False)}),
    ("Explain like I'm five", {(U, "prefers_expertise", "layperson", None, False)}),
    ("I'm an expert, skip the basics", {(U, "prefers_expertise", "expert", None, False)}),
    # negations and changes
    ("I no longer live in Oslo", {(U, "lives_in", "Oslo", None, True)}),
    ("I don't live in Oslo anymore", {(U, "lives_in", "Oslo", None, True)}),
    ("I'm not vegetarian any more", {(U, "diet", "vegetarian", None, True)}),
    ("I don't like mushrooms anymore", {(U, "likes", "mushrooms", None, True)}),
    ("I quit coffee", {(U, "likes", "coffee", None, True)}),
    ("I stopped drinking coffee", {(U, "likes", "coffee", None, True)}),
    ("I don't have a dog anymore", {(U, "has_pet", "dog", "dog", True)}),
    ("I quit my job at Acme", {(U, "works_at", "Acme", None, True)}),
    ("I switched from coffee to green tea", {(U, "likes", "coffee", None, True),
                                             (U, "likes", "green tea", None, False)}),
    ("I've switched to oat milk", {(U, "likes", "oat milk", None, False)}),
    # several statements per turn
    ("Hi, I'm Sam and I live in Oslo. I work as a nurse, but I love hiking!",
     {(U, "name", "Sam", None, False), (U, "lives_in", "Oslo", None, False), (U, "works_as", "nurse", None, False),
      (U, "likes", "hiking", None, False)}),
    ("Well, I moved to Bergen because of work, and my favorite drink is tea.",
     {(U, "lives_in", "Bergen", None, False), (U, "favorite", "tea", "drink", False)}),
]

# Nothing should come out of these.
NEGATIVES = [
    "Do I like sushi?",
    "Where do I live?",
    "What is my favorite color?",
    "Am I allergic to anything?",
    "If I lived in Paris I would eat croissants every day.",
    "Imagine I moved to Tokyo.",
    "I would love it if it were sunny",
    'My friend said "I live in Paris and I love cats"',
    "Anna said she loves cats.",
    "My boss thinks I'm a genius.",
    "I'm a bit tired today.",
    "I'm fine, thanks.",
    "I'm not sure.",
    "I like it!",
    "I love you",
    "I want to know how tides work.",
    "I'd like to ask a question about Python.",
    "The weather in Oslo is nice.",
    "Paris is a beautiful city.",
    "",
    "   ",
]


def as_tuples(cands: list[Candidate]) -> set[tuple]:
    return {(c.subject, c.relation, c.object, c.category, c.negated) for c in cands}


@pytest.fixture(scope="module")
def extractor() -> PatternExtractor:
    return PatternExtractor()


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_pattern_extractor_finds_exactly_the_stated_facts(extractor, text, expected) -> None:
    assert as_tuples(extractor.extract(text)) == expected


@pytest.mark.parametrize("text", NEGATIVES)
def test_questions_hypotheticals_and_reported_speech_yield_nothing(extractor, text) -> None:
    assert extractor.extract(text) == []


def test_only_user_messages_yield_facts(extractor) -> None:
    assert extractor.extract("I live in Oslo and I love sushi.", role="assistant") == []
    assert extractor.extract("I live in Oslo", role="system") == []


def test_candidates_carry_kind_polarity_strength_and_the_switch(extractor) -> None:
    love, hate = extractor.extract("I love sushi. I hate olives.")
    assert (love.kind, love.polarity, hate.kind, hate.polarity) == ("preference", "likes", "preference", "dislikes")
    assert love.strength > 0.5 and hate.strength > 0.5
    _, tea = extractor.extract("I switched from coffee to green tea")
    assert tea.replaces == "coffee"
    assert isinstance(extractor, Extractor)


def test_extracted_statements_drive_the_graph_end_to_end(extractor) -> None:
    clock = ManualClock(utc(2024, 1, 1))
    kg = KnowledgeGraph(":memory:", clock)
    turns = ["I live in Oslo and I love coffee. My favorite drink is coffee.",
             "Keep your answers short please.",
             "I moved to Bergen! I switched from coffee to green tea."]
    for day, text in enumerate(turns, start=1):
        clock.set(utc(2024, 1, day))
        kg.apply("u1", extractor.extract(text), episode_id=f"ep{day}", at=utc(2024, 1, day))
    assert {(f.relation, f.object, f.category) for f in kg.facts("u1")} == {
        ("lives_in", "Bergen", None), ("likes", "green tea", None), ("favorite", "green tea", "drink"),
        ("prefers_verbosity", "concise", None)}
    kg.close()


def test_pattern_extraction_is_fast_enough_for_every_turn(extractor) -> None:
    # Not a timing assertion on a tight bound: a generous ceiling that catches catastrophic regex backtracking.
    text = "Hi, I'm Sam and I live in Oslo. I work as a nurse, but I love hiking! My favourite colour is blue. " * 3
    start = time.perf_counter()
    for _ in range(50):
        extractor.extract(text)
    assert (time.perf_counter() - start) / 50 < 0.05


# ---------------------------------------------------------------------------------------------- LLM extractor
# The chat models below are scripted (GenericFakeChatModel / FakeListChatModel): the point of these tests is
# the parser — code fences, prose around the JSON, invalid items, schema normalization — not the model.


def test_prompt_is_a_pure_function_naming_the_schema() -> None:
    a, b = extraction_prompt("I live in Oslo"), extraction_prompt("I live in Oslo")
    assert [m.content for m in a] == [m.content for m in b]
    assert "lives_in" in a[0].content and "prefers_verbosity: concise or detailed" in a[0].content
    assert a[-1].content.endswith("I live in Oslo")


def test_llm_reply_in_a_code_fence_with_prose_is_parsed_and_normalized() -> None:
    reply = ('Sure! Here are the facts:\n```json\n{"items": [\n'
             '{"subject": "user", "relation": "Lives In", "object": "Bergen"},\n'
             '{"subject": "I", "relation": "favourite_colour", "object": "blue"},\n'
             '{"subject": "user", "relation": "has_sister", "object": "Anna"},\n'
             '{"subject": "user", "relation": "likes", "object": "coffee", "negated": true},\n'
             '{"subject": "user", "relation": "prefers_verbosity", "object": "short"},\n'
             '{"subject": "user", "relation": "Plays Instrument", "object": "piano"}\n'
             ']}\n```\nLet me know if you need more.')
    llm = LLMExtractor(GenericFakeChatModel(messages=iter([AIMessage(content=reply)])))
    got = llm.extract("whatever the user said")
    assert as_tuples(got) == {
        (U, "lives_in", "Bergen", None, False), (U, "favorite", "blue", "color", False),
        (U, "has_sibling", "Anna", "sister", False), (U, "likes", "coffee", None, True),
        (U, "prefers_verbosity", "concise", None, False), (U, "plays_instrument", "piano", None, False)}
    likes = next(c for c in got if c.relation == "likes")
    assert (likes.kind, likes.polarity) == ("preference", "likes")


def test_llm_invalid_items_are_dropped_and_the_rest_kept(caplog) -> None:
    reply = ('[{"relation": "lives_in", "object": "Oslo"}, {"relation": "likes"}, "junk", '
             '{"relation": "prefers_formality", "object": "purple"}, {"relation": "", "object": "x"}, '
             '{"subject": "Tom", "relation": "works_as", "object": "pilot", "kind": "banana"}] trailing words')
    llm = LLMExtractor(FakeListChatModel(responses=[reply]))
    with caplog.at_level("INFO", logger="memory.extraction.llm"):
        got = llm.extract("text")
    assert as_tuples(got) == {(U, "lives_in", "Oslo", None, False)}
    assert "dropping" in caplog.text


@pytest.mark.parametrize("reply", ["I could not find any facts.", "", "{not json", '{"items": "nope"}', "[]", "null"])
def test_llm_replies_without_items_give_nothing_and_never_raise(reply) -> None:
    assert LLMExtractor(FakeListChatModel(responses=[reply])).extract("I live in Oslo") == []


def test_llm_max_items_and_roles() -> None:
    reply = '{"items": [' + ",".join(f'{{"relation": "likes", "object": "thing{i}"}}' for i in range(20)) + "]}"
    llm = LLMExtractor(FakeListChatModel(responses=[reply]), max_items=3)
    assert len(llm.extract("I like many things")) == 3
    assert llm.extract("I like many things", role="assistant") == []


def test_llm_structured_output_path_is_used_when_the_model_supports_it() -> None:
    calls = []

    class ToolCapableFake(FakeListChatModel):
        """Scripted: with_structured_output returns one valid parse, as a tool-calling model would."""

        def with_structured_output(self, schema, *, include_raw=False, **kwargs):
            assert schema is ExtractionResult and include_raw
            parsed = ExtractionResult(items=[ExtractedItem(relation="works_as", object="pilot")])
            reply = {"raw": None, "parsed": parsed, "parsing_error": None}
            return RunnableLambda(lambda msgs: calls.append(msgs) or reply)

    got = LLMExtractor(ToolCapableFake(responses=["never used"])).extract("I fly planes for a living")
    assert as_tuples(got) == {(U, "works_as", "pilot", None, False)} and len(calls) == 1


def test_llm_structured_failure_falls_back_to_partial_tool_args_or_json() -> None:
    class BrokenToolFake(FakeListChatModel):
        """Scripted: the tool call's arguments fail validation as a whole; one item is still usable."""

        def with_structured_output(self, schema, *, include_raw=False, **kwargs):
            raw = AIMessage(content="", tool_calls=[{"name": "ExtractionResult", "id": "1", "args": {
                "items": [{"relation": "lives_in", "object": "Oslo"}, {"relation": 5}]}}])
            return RunnableLambda(lambda msgs: {"raw": raw, "parsed": None, "parsing_error": ValueError("bad")})

    got = LLMExtractor(BrokenToolFake(responses=["x"])).extract("t")
    assert as_tuples(got) == {(U, "lives_in", "Oslo", None, False)}

    class RaisingFake(FakeListChatModel):
        def with_structured_output(self, schema, *, include_raw=False, **kwargs):
            return RunnableLambda(lambda msgs: (_ for _ in ()).throw(RuntimeError("provider down")))

    fallback = LLMExtractor(RaisingFake(responses=['{"items": [{"relation": "age", "object": "34"}]}']))
    assert as_tuples(fallback.extract("I'm 34")) == {(U, "age", "34", None, False)}


def test_parse_items_accepts_dicts_lists_and_text() -> None:
    assert parse_items({"facts": [{"relation": "x", "object": "y"}]}) == [{"relation": "x", "object": "y"}]
    assert parse_items({"relation": "x", "object": "y"}) == [{"relation": "x", "object": "y"}]
    assert parse_items('noise [1, {"relation": "a"}] {"b": 2}') == [{"relation": "a"}]


@pytest.mark.slow  # a real generation of up to 64 tokens after a ~500-token prompt on CPU
def test_llm_extractor_with_the_real_local_model_returns_a_list(local_model) -> None:
    from agent.chat_model import PllmChatModel
    from editing import GenerationSettings

    chat = PllmChatModel(local=local_model, settings=GenerationSettings(max_new_tokens=64))
    got = LLMExtractor(chat).extract("I live in Oslo and I love sushi.")
    assert isinstance(got, list) and all(isinstance(c, Candidate) for c in got)
