"""Facts → chat-form edit requests: a template per relation, None for what should not be edited."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from editing.errors import InvalidRequest
from editing.fact_edits import (EDITABLE_RELATIONS, TRAINED_QUESTIONS, chat_questions_for, edit_request_for,
                                template_for)
from memory.records import Fact

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fact(relation: str, obj: str, *, category: str | None = None, confidence: float = 0.9, subject: str = "user",
         kind: str = "fact") -> Fact:
    return Fact(user_id="u1", subject=subject, relation=relation, object=obj, valid_from=NOW, recorded_at=NOW,
                confidence=confidence, category=category, kind=kind)  # type: ignore[arg-type]


def test_a_city_becomes_a_first_person_chat_edit() -> None:
    request = edit_request_for(fact("lives_in", "Lisbon"))
    assert request is not None
    assert request.target_new == "Lisbon" and request.answer_prefix == "You live in"
    assert "Where do I live?" in request.chat_questions
    assert request.text == "I live in the city of"
    assert request.key == "user|lives_in|"


def test_favorites_are_phrased_per_category_and_keyed_per_slot() -> None:
    band = edit_request_for(fact("favorite", "Radiohead", category="band", kind="preference"))
    food = edit_request_for(fact("favorite", "sushi", category="food", kind="preference"))
    assert band is not None and food is not None
    assert band.chat_questions[0] == "What's my favorite band?" and band.answer_prefix == "Your favorite band is"
    assert band.key != food.key
    later = edit_request_for(fact("favorite", "Muse", category="band", kind="preference"))
    assert later is not None and later.key == band.key, "a later value of the same slot must replace the edit"


@pytest.mark.parametrize("relation", sorted(EDITABLE_RELATIONS))
def test_every_template_makes_a_valid_request_with_held_out_questions(relation: str) -> None:
    category = "book" if relation == "favorite" else None
    request = edit_request_for(fact(relation, "Zorblax", category=category,
                                    kind="preference" if relation == "favorite" else "fact"))
    assert request is not None and request.text.count("{}") == 0
    questions = chat_questions_for(relation, category)
    assert TRAINED_QUESTIONS < len(questions) <= TRAINED_QUESTIONS + 2 and all(q.endswith(("?", ".")) for q in questions)
    assert request.chat_questions == questions[:TRAINED_QUESTIONS]
    assert questions[-1] not in request.chat_questions  # a paraphrase kept for evaluation
    assert request.paraphrases


def test_memory_names_the_user_by_id_and_every_pet_is_its_own_slot() -> None:
    # pllm's memory writes the user's own facts with subject == user id ("u1"), not "user".
    own = edit_request_for(fact("lives_in", "Lisbon", subject="u1"))
    assert own is not None and own.target_new == "Lisbon" and own.key == "u1|lives_in|"
    assert edit_request_for(fact("lives_in", "Lisbon", subject="kim")) is None  # someone else
    rex, mochi = edit_request_for(fact("has_pet", "Rex")), edit_request_for(fact("has_pet", "Mochi"))
    assert rex is not None and mochi is not None and rex.key != mochi.key  # a second pet adds, never replaces


def test_facts_that_should_not_be_edited_give_none() -> None:
    assert edit_request_for(fact("lives_in", "Lisbon", confidence=0.5)) is None  # too uncertain
    assert edit_request_for(fact("lives_in", "Lisbon", confidence=0.7), min_confidence=0.8) is None
    assert edit_request_for(fact("likes", "jazz", kind="preference")) is None  # no single-answer phrasing
    assert edit_request_for(fact("prefers_verbosity", "concise", kind="preference")) is None
    assert edit_request_for(fact("favorite", "Muse", kind="preference")) is None  # favorite what?
    assert edit_request_for(fact("lives_in", "Paris", subject="my sister")) is None  # not about the user
    assert edit_request_for(fact("knows", "Bob")) is None
    assert template_for("plans") is None


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match="str subject"):
        edit_request_for(object())
    with pytest.raises(InvalidRequest, match="editable relations"):
        chat_questions_for("likes")
