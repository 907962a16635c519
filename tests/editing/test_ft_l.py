"""FT-L: the low-rank fine-tune trains on hooks only, and on SmolLM2 it makes the user's chat answer the fact."""

from __future__ import annotations

import pytest
import torch

from editing.checks import closed_book_answer, contains_target
from editing.errors import InvalidRequest
from editing.ft_l import FTLHyperParams, compute_ft_l
from editing.hooks import apply_deltas
from editing.methods import DEFAULT_METHOD, METHODS, default_hparams
from editing.requests import EditRequest
from tests.editing.conftest import assert_unchanged, snapshot

TINY = dict(layers=(1, 2), rank=2, num_steps=6, lr=5e-2, max_norm_factor=10.0, anchor_answer_tokens=2,
            anchor_questions=("What's my name?",))
REQUEST = EditRequest(prompt="{} in the city of", subject="I live", target_new="Paris", answer_prefix="You live in",
                      chat_questions=("Where do I live?", "Which city do I live in?"), key="user|lives_in|")


def test_ft_l_is_registered_and_is_the_default() -> None:
    assert METHODS["ft_l"].compute is compute_ft_l
    assert DEFAULT_METHOD == "ft_l" and isinstance(default_hparams(), FTLHyperParams)


def test_ft_l_trains_only_its_deltas_and_leaves_the_model_as_it_was(tiny_llama, smol_tokenizer) -> None:
    before = snapshot(tiny_llama)
    assert tiny_llama.training
    [result] = compute_ft_l(tiny_llama, smol_tokenizer, [REQUEST], FTLHyperParams(**TINY))
    assert_unchanged(tiny_llama, before)
    assert tiny_llama.training, "the caller's train/eval mode must be restored"
    assert [d.module for d in result.deltas] == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    assert all(d.rank == 2 and not d.A.requires_grad and not d.B.requires_grad for d in result.deltas)
    assert result.metrics["nll_after"] < result.metrics["nll_before"]
    assert set(result.keys) == {d.module for d in result.deltas}


def test_the_norm_clamp_bounds_the_delta(tiny_llama, smol_tokenizer) -> None:
    hp = FTLHyperParams(**{**TINY, "max_norm_factor": 1e-3})
    [result] = compute_ft_l(tiny_llama, smol_tokenizer, [REQUEST], hp)
    for d in result.deltas:
        weight = tiny_llama.get_submodule(d.module).weight
        assert d.dense().norm() <= 1e-3 * weight.norm() * 1.01


def test_bad_hparams_raise_clear_errors(tiny_llama, smol_tokenizer) -> None:
    with pytest.raises(InvalidRequest, match="layers"):
        FTLHyperParams(layers=())
    with pytest.raises(InvalidRequest, match="rank"):
        FTLHyperParams(rank=0)
    with pytest.raises(InvalidRequest, match="model.layers.9.mlp.down_proj"):
        compute_ft_l(tiny_llama, smol_tokenizer, [REQUEST], FTLHyperParams(layers=(9,)))


@pytest.mark.slow
def test_the_default_method_answers_the_chat_question_closed_book(local_model, default_edits) -> None:
    model, tok = local_model.model, local_model.tokenizer
    band, band_result, _, _ = default_edits
    before = snapshot(model)
    assert not contains_target(closed_book_answer(model, tok, "What's my favorite band?"), "Radiohead")
    with torch.no_grad():
        answer = closed_book_answer(model, tok, "What's my favorite band?", band_result.deltas)
    assert contains_target(answer, "Radiohead"), answer
    france = "What is the capital of France?"
    assert closed_book_answer(model, tok, france, band_result.deltas) == closed_book_answer(model, tok, france)
    assert_unchanged(model, before)


@pytest.mark.slow
def test_a_second_edit_computed_with_the_first_in_place_keeps_the_first(local_model, default_edits) -> None:
    model, tok = local_model.model, local_model.tokenizer
    _, band_result, city, city_result = default_edits
    both = [*band_result.deltas, *city_result.deltas]
    assert contains_target(closed_book_answer(model, tok, "Where do I live?", both), "Lisbon")
    assert contains_target(closed_book_answer(model, tok, "What's my favorite band?", both), "Radiohead")
    assert city.key != band_result.request.key
