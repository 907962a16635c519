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


def test_a_bf16_model_takes_a_later_edit_that_preserves_an_earlier_one(tiny_llama, smol_tokenizer) -> None:
    # Found on the GPU machine, where the model runs in bf16: the penalty that keeps earlier edits' keys in place
    # multiplied their fp32 keys by the bf16 weights ("expected mat1 and mat2 to have the same dtype").
    model = tiny_llama.to(torch.bfloat16)
    [first] = compute_ft_l(model, smol_tokenizer, [REQUEST], FTLHyperParams(**TINY))
    band = EditRequest(prompt="{} is", subject="My favorite band", target_new="Muse", answer_prefix="Your favorite band is",
                       chat_questions=("What's my favorite band?",), key="user|favorite|band")
    with apply_deltas(model, first.deltas):
        [second] = compute_ft_l(model, smol_tokenizer, [band], FTLHyperParams(**{**TINY, "preserve_weight": 1.0}),
                                preserve=first.keys)
    assert second.metrics["nll_after"] < second.metrics["nll_before"]
    assert all(torch.isfinite(d.A).all() and torch.isfinite(d.B).all() for d in second.deltas)


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
    with pytest.raises(InvalidRequest, match="stop_margin"):
        FTLHyperParams(stop_margin=-1.0)


def test_stop_margin_ends_training_once_the_chat_answers_are_greedy(tiny_llama, smol_tokenizer) -> None:
    # Off (None), every step runs; at 0 nats, training stops at the first step where every chat-answer token
    # is the model's top choice (the plain-prompt row does not count), long before the step budget.
    runs = {m: compute_ft_l(tiny_llama, smol_tokenizer, [REQUEST],
                            FTLHyperParams(**{**TINY, "num_steps": 40, "stop_margin": m}))[0] for m in (None, 0.0)}
    assert runs[None].metrics["steps"] == 40
    assert 0 < runs[0.0].metrics["steps"] < 40


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


def test_the_shared_chat_prefix_computed_once_gives_the_same_scores(tiny_llama, smol_tokenizer) -> None:
    # FT-L computes the chat template's shared prefix once per edit and reuses its states every step; that is
    # exact only because the delta is kept off the prefix's keys. With a delta so projected, the scores with
    # the reused prefix must equal a plain forward over the whole rows.
    from editing.ft_l.ft_l_main import _new_deltas, _prefix_states, _project, _scored_logp, _template_bases
    from editing.ft_l.pairs import chat_prefix_ids, training_rows

    model = tiny_llama.eval()
    prefix = chat_prefix_ids(smol_tokenizer)
    assert len(prefix) > 5  # SmolLM2's template opens every chat with its default system turn
    chat, plain = training_rows(smol_tokenizer, REQUEST, include_plain=True, device=model.device,
                                prefix=prefix)
    assert chat.prefix is not None and chat.ids.shape[0] == 2 and plain.prefix is None
    modules = ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    deltas = _new_deltas(model, modules, rank=2, seed=0)
    with torch.no_grad():
        for d in deltas:
            d.B.normal_(0, 0.5)  # a delta that really changes the outputs
        _project(deltas, _template_bases(model, smol_tokenizer, modules))
        past = _prefix_states(model, chat.prefix)
        with apply_deltas(model, deltas):
            shared = _scored_logp(model, chat, past)
            whole = _scored_logp(model, chat, None)
        unedited = _scored_logp(model, chat, past)
    torch.testing.assert_close(shared, whole, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(shared, unedited, atol=1e-3)  # the delta did change the answers' scores
