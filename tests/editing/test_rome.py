"""ROME on tiny llama / gpt2 models and on the real SmolLM2: the edit lands, the model stays untouched."""

from __future__ import annotations

import pytest
import torch

from editing.errors import InvalidRequest
from editing.hooks import apply_deltas
from editing.requests import EditRequest
from editing.rome import ROMEHyperParams, compute_rome
from tests.editing.conftest import TEMPLATES, TINY_VALUE, assert_unchanged, greedy_next, snapshot

# A random tiny model barely moves a vector from one position to another through attention, so the
# tiny tests put the subject's last token at the end of the prompt; the SmolLM2 test below edits a
# subject in the middle of a sentence.
TINY_REQUEST = EditRequest(prompt="{}", subject="Sam lives in the city of", target_new="Paris")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rome_edit_lands_through_a_hook_and_leaves_the_weights_alone(arch: str, request, smol_tokenizer) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    before = snapshot(model)
    assert model.training
    assert greedy_next(model, smol_tokenizer, TINY_REQUEST.text).strip() != "Paris"

    [result] = compute_rome(model, smol_tokenizer, [TINY_REQUEST], ROMEHyperParams(layer=1, **TINY_VALUE,
                                                                                  **TEMPLATES[arch]))

    assert_unchanged(model, before)
    assert model.training, "the caller's train/eval mode must be restored"
    [delta] = result.deltas
    assert delta.module == TEMPLATES[arch]["rewrite_module_tmp"].format(1)
    assert delta.rank == 1 and result.method == "rome"
    assert result.metrics["nll_after"] < result.metrics["nll_before"]
    model.eval()
    with apply_deltas(model, result.deltas):
        assert greedy_next(model, smol_tokenizer, TINY_REQUEST.text).strip() == "Paris"
    assert greedy_next(model, smol_tokenizer, TINY_REQUEST.text).strip() != "Paris", "the hook must come off"
    assert_unchanged(model, before)


def test_the_delta_writes_exactly_the_optimized_change_at_the_key(tiny_llama, smol_tokenizer) -> None:
    # ΔW k* = δ: applied to the key it was built for, the rank-one delta gives the full change v* − W k*.
    [result] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST], ROMEHyperParams(layer=2, **TINY_VALUE))
    [delta] = result.deltas
    key = result.keys[delta.module][0]
    assert torch.allclose(delta.dense() @ key, delta.B[:, 0] * (delta.A[0] @ key))
    assert (delta.dense() @ key).norm() == pytest.approx(result.metrics["delta_norm"], rel=1e-3)


def test_bad_requests_raise_clear_errors(tiny_llama, smol_tokenizer) -> None:
    hp = ROMEHyperParams(layer=1, **TINY_VALUE)
    with pytest.raises(InvalidRequest, match="empty"):
        compute_rome(tiny_llama, smol_tokenizer, [], hp)
    with pytest.raises(InvalidRequest, match=r"wrap the single request as \[request\]"):
        compute_rome(tiny_llama, smol_tokenizer, TINY_REQUEST, hp)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="not an EditRequest"):
        compute_rome(tiny_llama, smol_tokenizer, [{"prompt": "{} is", "subject": "x"}], hp)  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match=r"model.layers.9.mlp.down_proj"):
        compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST], ROMEHyperParams(layer=9))
    with pytest.raises(InvalidRequest, match="exactly one"):
        EditRequest(prompt="Sam lives in", subject="Sam", target_new="Paris")
    with pytest.raises(InvalidRequest, match="v_num_grad_steps"):
        ROMEHyperParams(v_num_grad_steps=0)
    with pytest.raises(InvalidRequest, match="rewrite_module_tmp"):
        ROMEHyperParams(rewrite_module_tmp="model.layers.mlp.down_proj")


def test_real_smollm2_rome_edit_changes_the_fact_and_nothing_unrelated(local_model, one_thread) -> None:
    # one_thread: ≈ 12 s on a loaded 2-core machine where two threads took ≈ 75 s.
    model, tok = local_model.model, local_model.tokenizer
    request = EditRequest(prompt="{} lives in the city of", subject="Sam Miller", target_new="Paris")
    unrelated = "The capital of Japan is"
    before = snapshot(model)
    plain = greedy_next(model, tok, request.text, n=2)
    unrelated_before = greedy_next(model, tok, unrelated, n=4)
    assert "Paris" not in plain

    [result] = compute_rome(model, tok, [request], ROMEHyperParams())  # the defaults are SmolLM2's

    assert_unchanged(model, before)
    with apply_deltas(model, result.deltas):
        assert greedy_next(model, tok, request.text, n=2).strip().startswith("Paris")
        assert greedy_next(model, tok, unrelated, n=4) == unrelated_before
    assert greedy_next(model, tok, request.text, n=2) == plain


def test_rome_with_statistics_and_a_preserved_key(tiny_llama, smol_tokenizer, tmp_path) -> None:
    from editing.stats import SecondMoments

    stats = SecondMoments(tiny_llama, smol_tokenizer, model_id="tiny", cache_dir=tmp_path, seq_len=32, batch_size=8)
    hp = ROMEHyperParams(layer=1, mom2_n_tokens=512, **TINY_VALUE)
    other = EditRequest(prompt="{}", subject="Ana plays the", target_new="violin")
    [first] = compute_rome(tiny_llama, smol_tokenizer, [other], hp, stats=stats)
    [free] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST], hp, stats=stats)
    [kept] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST], hp, stats=stats, preserve=first.keys)
    assert stats.computed == 1
    k_first = first.keys[free.deltas[0].module][0]
    assert (kept.deltas[0].dense() @ k_first).norm() < 0.2 * (free.deltas[0].dense() @ k_first).norm()
    tiny_llama.eval()
    for result in (free, kept):
        with apply_deltas(tiny_llama, result.deltas):
            assert greedy_next(tiny_llama, smol_tokenizer, TINY_REQUEST.text).strip() == "Paris"


def test_v_stop_nll_ends_the_optimisation_once_the_target_is_likely(tiny_llama, smol_tokenizer) -> None:
    # The reported nll_after is the target's NLL with the final δ, whichever way the loop ended.
    [full] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST], ROMEHyperParams(layer=1, **TINY_VALUE))
    stop_at = (full.metrics["nll_before"] + full.metrics["nll_after"]) / 2  # reached half way, or sooner
    [early] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST],
                           ROMEHyperParams(layer=1, **{**TINY_VALUE, "v_stop_nll": stop_at}))
    assert 1 <= early.metrics["steps"] < full.metrics["steps"]
    assert full.metrics["nll_after"] < early.metrics["nll_after"] < stop_at
    [none] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST],
                          ROMEHyperParams(layer=1, **{**TINY_VALUE, "v_stop_nll": 1e9}))
    assert none.metrics["steps"] == 0 and none.metrics["delta_norm"] == 0
    assert none.metrics["nll_after"] == pytest.approx(none.metrics["nll_before"])
    with pytest.raises(InvalidRequest, match="v_stop_nll"):
        ROMEHyperParams(v_stop_nll=-1.0)


@pytest.mark.slow
def test_real_smollm2_sequential_edits_all_hold_together(local_model, one_thread) -> None:
    # A user's edits accumulate: each is computed with the earlier ones hooked in and their keys preserved.
    model, tok = local_model.model, local_model.tokenizer
    requests = [EditRequest(prompt="{} lives in the city of", subject="Sam Miller", target_new="Paris"),
                EditRequest(prompt="{} plays the", subject="Ana Lopez", target_new="violin"),
                EditRequest(prompt="The favorite food of {} is", subject="Tom Berg", target_new="sushi")]
    unrelated = "The capital of Japan is"
    unrelated_before = greedy_next(model, tok, unrelated, n=4)
    results = []
    for request in requests:
        earlier = [d for r in results for d in r.deltas]
        preserve = {m: torch.cat([r.keys[m] for r in results]) for m in results[0].keys} if results else None
        with apply_deltas(model, earlier):
            results += compute_rome(model, tok, [request], ROMEHyperParams(), preserve=preserve)
    with apply_deltas(model, [d for r in results for d in r.deltas]):
        for request in requests:
            assert greedy_next(model, tok, request.text, n=2).strip().startswith(request.target_new), request
        assert greedy_next(model, tok, unrelated, n=4) == unrelated_before


def test_prefixes_fixed_once_give_the_same_edit_as_generating_them_per_call(tiny_llama, smol_tokenizer) -> None:
    from editing.rome import with_fixed_prefixes

    hp = ROMEHyperParams(layer=1, **TINY_VALUE)
    fixed = with_fixed_prefixes(tiny_llama, smol_tokenizer, hp)
    assert fixed.context_prefixes[0] == "" and len(fixed.context_prefixes) == 1 + 2  # TINY_VALUE: 2 generated
    assert tiny_llama.training, "generating the prefixes must restore the caller's train/eval mode"
    [generated] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST], hp)
    [reused] = compute_rome(tiny_llama, smol_tokenizer, [TINY_REQUEST], fixed)
    assert torch.allclose(generated.deltas[0].dense(), reused.deltas[0].dense(), atol=1e-6)
    with pytest.raises(InvalidRequest, match="empty prefix"):
        ROMEHyperParams(context_prefixes=("Once upon a time. ",))
