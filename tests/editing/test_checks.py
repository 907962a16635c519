"""check_edit and closed_book_answer on the real SmolLM2: what a user would see in chat."""

from __future__ import annotations

import pytest
import torch

from editing.chat_prompts import NEUTRAL_CHAT, chat_form_requests, render_question
from editing.checks import check_edit, closed_book_answer, contains_target
from editing.errors import InvalidRequest
from editing.requests import EditRequest, LowRankDelta


def test_closed_book_answer_is_the_models_greedy_chat_reply(local_model) -> None:
    model, tok = local_model.model, local_model.tokenizer
    answer = closed_book_answer(model, tok, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in answer
    ids = tok(render_question(tok, "What is the capital of France?"), add_special_tokens=False,
              return_tensors="pt")["input_ids"]
    assert ids.shape[1] == local_model.encode_chat([{"role": "user", "content": "What is the capital of France?"}]).shape[1]


def test_a_zero_delta_changes_nothing_and_does_not_pass(local_model) -> None:
    model, tok = local_model.model, local_model.tokenizer
    zero = LowRankDelta("model.layers.4.mlp.down_proj", A=torch.zeros(1, 1536), B=torch.zeros(576, 1))
    request = EditRequest(prompt="{} is", subject="my favorite band", target_new="Radiohead",
                          answer_prefix="Your favorite band is", chat_questions=("What's my favorite band?",))
    check = check_edit(model, tok, request, [zero], neutral_prompts=NEUTRAL_CHAT[:2])
    assert (check.efficacy, check.chat_efficacy, check.locality, check.passed, check.verbatim) == (0.0, 0.0, 1.0,
                                                                                                False, 1.0)
    assert check.neutral_after == check.neutral_before and len(check.neutral_before) == 2


def test_every_neutral_question_is_answered_right_by_the_base_model(local_model) -> None:
    # Locality counts a neutral question as kept while its answer holds what a right one holds: the base
    # model must get them all right, or the check would blame an edit for the model's own mistake.
    from editing.chat_prompts import NEUTRAL_ANSWERS

    model, tok = local_model.model, local_model.tokenizer
    for question in NEUTRAL_CHAT:
        answer = closed_book_answer(model, tok, question, max_new_tokens=16)
        assert any(contains_target(answer, a) for a in NEUTRAL_ANSWERS[question]), (question, answer)


def test_an_edit_that_breaks_a_neutral_fact_fails_locality(local_model) -> None:
    # A large delta on the last layer's MLP output wrecks every answer: locality must say so.
    model, tok = local_model.model, local_model.tokenizer
    gen = torch.Generator().manual_seed(0)
    wreck = LowRankDelta("model.layers.28.mlp.down_proj", A=torch.randn(4, 1536, generator=gen),
                         B=torch.randn(576, 4, generator=gen) * 2.0)
    request = EditRequest(prompt="{} is", subject="my favorite band", target_new="Radiohead",
                          answer_prefix="Your favorite band is", chat_questions=("What's my favorite band?",))
    check = check_edit(model, tok, request, [wreck], neutral_prompts=NEUTRAL_CHAT[:3])
    assert check.locality < 0.5 and check.verbatim < 0.5 and not check.passed
    # The "before" answers handed in by the caller (an earlier check's) give the same verdict.
    again = check_edit(model, tok, request, [wreck], neutral_prompts=NEUTRAL_CHAT[:3],
                       neutral_before=check.neutral_before)
    assert again == check
    with pytest.raises(InvalidRequest, match="neutral_before has 1 answers for 3 prompts"):
        check_edit(model, tok, request, [wreck], neutral_prompts=NEUTRAL_CHAT[:3], neutral_before=["x"])


@pytest.mark.slow
def test_the_default_edit_passes_its_check(local_model, default_edits) -> None:
    model, tok = local_model.model, local_model.tokenizer
    band, band_result, _, _ = default_edits
    check = check_edit(model, tok, band, band_result.deltas)
    assert check.passed, check
    assert check.chat_efficacy >= 0.5 and check.locality >= 0.8


def test_chat_form_requests_put_the_question_inside_the_template(smol_tokenizer) -> None:
    request = EditRequest(prompt="{} is", subject="my favorite band", target_new="Radiohead",
                          answer_prefix="Your favorite band is", chat_questions=("What's my favorite band?", "Which band?"))
    rows = chat_form_requests(smol_tokenizer, request)
    assert [r.subject for r in rows] == list(request.chat_questions)
    assert rows[0].text == render_question(smol_tokenizer, "What's my favorite band?") + "Your favorite band is"


def test_bad_input_is_a_clear_error(local_model) -> None:
    model, tok = local_model.model, local_model.tokenizer
    with pytest.raises(InvalidRequest, match="chat_questions"):
        check_edit(model, tok, EditRequest(prompt="{} is", subject="x", target_new="y"), [])
    with pytest.raises(InvalidRequest, match="non-empty"):
        closed_book_answer(model, tok, "  ")
    assert contains_target("Your favorite band is RADIOHEAD.", "Radiohead")
