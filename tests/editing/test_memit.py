"""MEMIT on a tiny llama: several facts at once over several layers, the model untouched, earlier keys kept."""

from __future__ import annotations

import pytest
import torch

from editing.errors import InvalidRequest
from editing.hooks import apply_deltas
from editing.memit import MEMITHyperParams, compute_memit
from editing.methods import METHODS, get_method
from editing.requests import EditRequest
from editing.rome import ROMEHyperParams
from editing.stats import SecondMoments
from tests.editing.conftest import TINY_VALUE, assert_unchanged, greedy_next, snapshot

# Subjects end their prompts: see the note in test_rome.py about random tiny models.
REQUESTS = [EditRequest(prompt="{}", subject="Sam lives in the city of", target_new="Paris"),
            EditRequest(prompt="{}", subject="Ana plays the", target_new="violin")]
HP = MEMITHyperParams(layers=(1, 2), mom2_update_weight=1.0, **TINY_VALUE)


def test_memit_writes_two_facts_over_two_layers_without_touching_the_model(tiny_llama, smol_tokenizer) -> None:
    before = snapshot(tiny_llama)
    results = compute_memit(tiny_llama, smol_tokenizer, REQUESTS, HP)
    assert_unchanged(tiny_llama, before)
    assert [r.method for r in results] == ["memit", "memit"]
    assert [d.module for d in results[0].deltas] == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    tiny_llama.eval()
    with apply_deltas(tiny_llama, [d for r in results for d in r.deltas]):
        for request in REQUESTS:
            assert greedy_next(tiny_llama, smol_tokenizer, request.text).strip() == request.target_new
    for request in REQUESTS:
        assert greedy_next(tiny_llama, smol_tokenizer, request.text).strip() != request.target_new


def test_memit_with_key_statistics_lands(tiny_llama, smol_tokenizer, tmp_path) -> None:
    stats = SecondMoments(tiny_llama, smol_tokenizer, model_id="tiny", cache_dir=tmp_path, seq_len=32, batch_size=8)
    hp = MEMITHyperParams(layers=(1, 2), mom2_update_weight=1.0, mom2_n_tokens=512, **TINY_VALUE)
    [result] = compute_memit(tiny_llama, smol_tokenizer, REQUESTS[:1], hp, stats=stats)
    assert stats.computed == 2
    tiny_llama.eval()
    with apply_deltas(tiny_llama, result.deltas):
        assert greedy_next(tiny_llama, smol_tokenizer, REQUESTS[0].text).strip() == "Paris"


def test_preserved_keys_are_left_almost_unread_by_a_later_edit(tiny_llama, smol_tokenizer) -> None:
    [first] = compute_memit(tiny_llama, smol_tokenizer, REQUESTS[:1], HP)
    [free] = compute_memit(tiny_llama, smol_tokenizer, REQUESTS[1:], HP)
    [kept] = compute_memit(tiny_llama, smol_tokenizer, REQUESTS[1:], HP, preserve=first.keys)
    for d_free, d_kept in zip(free.deltas, kept.deltas):
        k_first = first.keys[d_free.module][0]
        # How much the later edit changes what the module outputs for the earlier edit's key.
        assert (d_kept.dense() @ k_first).norm() < 0.2 * (d_free.dense() @ k_first).norm()


def test_registry_has_one_entry_shape(tiny_llama, smol_tokenizer) -> None:
    assert set(METHODS) == {"rome", "memit", "ft_l"}  # ft_l: tests/editing/test_ft_l.py
    for name, hp in [("rome", ROMEHyperParams(layer=1, **TINY_VALUE)), ("memit", HP)]:
        method = get_method(name)
        assert isinstance(hp, method.hparams)
        [result] = method.compute(tiny_llama, smol_tokenizer, REQUESTS[:1], hp, stats=None, preserve=None)
        assert result.method == name and result.deltas
    with pytest.raises(InvalidRequest, match="unknown editing method 'alphaedit'"):
        get_method("alphaedit")
    with pytest.raises(InvalidRequest, match="ascending"):
        MEMITHyperParams(layers=(3, 1))
