"""Tiny models for the knowledge-editing tests: built from a config, with the real SmolLM2 tokenizer.

A randomly initialized model is enough to test the mechanics of an edit (keys, target values, the
update, the hooks); the real-model behaviour is tested on SmolLM2 itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def smol_tokenizer(model_cache_dir: Path):  # -> PreTrainedTokenizerBase
    """The SmolLM2 tokenizer, from the converted model cache (built on first use).

    ``PLLM_TEST_TOKENIZER=FOLDER`` takes it from a folder instead (a machine without the packaged model, e.g. the
    GPU machine of bench/gpu_check.sh, where only the tokenizer files travel).
    """
    from transformers import AutoTokenizer

    from editing import ensure_converted, locate_packaged_gguf

    if os.environ.get("PLLM_TEST_TOKENIZER"):
        return AutoTokenizer.from_pretrained(os.environ["PLLM_TEST_TOKENIZER"], local_files_only=True)
    folder = ensure_converted(locate_packaged_gguf(), model_cache_dir)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _tiny(kind: str, vocab_size: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=vocab_size)
        model = LlamaForCausalLM(config)
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=256, vocab_size=vocab_size))
    # Built on the CPU (the same random weights everywhere), then moved: PLLM_TEST_DEVICE=cuda runs these tests there.
    return model.to(os.environ.get("PLLM_TEST_DEVICE") or "cpu")


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Tiny matrices: one CPU thread is much faster than several (thread hand-offs dominate)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_llama(smol_tokenizer, one_thread) -> torch.nn.Module:
    """A fresh 4-layer llama (hidden 64), in train mode as built — the methods must not change that."""
    return _tiny("llama", len(smol_tokenizer))


@pytest.fixture()
def tiny_gpt2(smol_tokenizer, one_thread) -> torch.nn.Module:
    return _tiny("gpt2", len(smol_tokenizer))


# The module templates per architecture: the only thing that differs between model families.
TEMPLATES = {
    "llama": dict(rewrite_module_tmp="model.layers.{}.mlp.down_proj", mlp_module_tmp="model.layers.{}.mlp",
                  layer_module_tmp="model.layers.{}"),
    "gpt2": dict(rewrite_module_tmp="transformer.h.{}.mlp.c_proj", mlp_module_tmp="transformer.h.{}.mlp",
                 layer_module_tmp="transformer.h.{}"),
}

# Settings for a randomly initialized model: its MLP outputs are ~0.02 in norm, so the weight decay and
# norm clamp relative to them (tuned for trained models) would forbid any change that moves the logits.
TINY_VALUE = dict(v_num_grad_steps=40, v_lr=0.5, v_weight_decay=0.0, clamp_norm_factor=1e4,
                  context_template_lengths=((4, 2),))


def greedy_next(model: torch.nn.Module, tokenizer, text: str, n: int = 1) -> str:
    """The greedy continuation of ``text`` (``n`` tokens), decoded."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:])


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the method changed weights: {changed[:5]}"
    assert all(p.grad is None for p in model.parameters()), "the method left gradients on the model"


@pytest.fixture(scope="session")
def default_edits(local_model):  # -> (band request, band result, city request, city result)
    """Two facts of one user written with the default method on SmolLM2: the band alone, then the city
    computed with the band's deltas in place (as a user's later edit is)."""
    from editing.fact_edits import edit_request_for
    from editing.hooks import apply_deltas
    from editing.methods import DEFAULT_METHOD, default_hparams, get_method
    from types import SimpleNamespace

    model, tok = local_model.model, local_model.tokenizer
    compute = get_method(DEFAULT_METHOD).compute
    band = edit_request_for(SimpleNamespace(subject="user", relation="favorite", object="Radiohead", category="band",
                                            kind="preference", confidence=0.9))
    city = edit_request_for(SimpleNamespace(subject="user", relation="lives_in", object="Lisbon", category=None,
                                            kind="fact", confidence=0.9))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core CPU: one thread is several times faster (see test_rome.py)
    [band_result] = compute(model, tok, [band], default_hparams())
    with apply_deltas(model, band_result.deltas):
        [city_result] = compute(model, tok, [city], default_hparams(), preserve=band_result.keys)
    torch.set_num_threads(threads)
    return band, band_result, city, city_result
