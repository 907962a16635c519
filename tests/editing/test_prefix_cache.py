"""Prefix caching: a prompt that starts like a recent one prefills only its new tail, with the same result."""

from __future__ import annotations

import pytest
import torch

from editing import GenerationSettings, InvalidRequest, LocalModel, LowRankDelta
from editing.batch_decode import BatchDecoder
from editing.generation import Decoder
from editing.prefix_cache import PrefixCache

SYSTEM = "You are a helpful personal assistant with long-term memory of this user."


def _chat(local_model: LocalModel, *turns: str) -> torch.Tensor:
    roles = ["user", "assistant"]
    messages = [{"role": "system", "content": SYSTEM}]
    messages += [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return local_model.encode_chat(messages)


def _delta(model: torch.nn.Module, seed: int) -> LowRankDelta:
    gen = torch.Generator().manual_seed(seed)
    name = "model.layers.1.self_attn.v_proj"
    out_f, in_f = model.get_submodule(name).weight.shape
    return LowRankDelta(name, torch.randn(2, in_f, generator=gen) * 0.5, torch.randn(out_f, 2, generator=gen) * 0.5)


def test_a_session_turn_reuses_the_previous_prompt_and_replies_as_without_the_cache(local_model: LocalModel) -> None:
    # The real SmolLM2, fp32: turn 2 of a session starts with turn 1's prompt (system message + turn 1's message).
    settings = GenerationSettings(max_new_tokens=24)
    first = _chat(local_model, "I live in Lisbon and I work as a nurse.")
    second = _chat(local_model, "I live in Lisbon and I work as a nurse.", "That sounds lovely!", "Where do I live?")
    cache = PrefixCache(64 * 2**20)
    cached, plain = (Decoder(local_model.model, local_model.tokenizer, prefix_cache=cache),
                     Decoder(local_model.model, local_model.tokenizer))
    with local_model.lock:
        assert "".join(cached.stream(first, settings)) == "".join(plain.stream(first, settings))
        assert cache.stats()["hits"] == 0 and len(cache) == 1
        shared = int((first[0, :-1] == second[0, : first.shape[1] - 1]).to(torch.int8).cumprod(0).sum())
        reply = "".join(cached.stream(second, settings))
        assert reply == "".join(plain.stream(second, settings))
    stats = cache.stats()
    assert stats["hits"] == 1 and stats["reused_tokens"] >= shared > 20  # the system message and turn 1 at least
    assert stats["computed_tokens"] == first.shape[1] + second.shape[1] - stats["reused_tokens"]


def test_prefill_from_a_prefix_gives_the_full_prefill_logits(tiny_llama) -> None:
    model = tiny_llama.eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (1, 40), generator=gen)
    longer = torch.cat([ids, torch.randint(10, 1000, (1, 12), generator=gen)], dim=1)
    cache = PrefixCache(2**24, min_tokens=8)
    with torch.inference_mode():
        cache.prefill(model, ids)
        out, kv = cache.prefill(model, longer)
        from transformers import DynamicCache

        full = model(input_ids=longer, cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    assert cache.stats()["reused_tokens"] == 40
    assert torch.allclose(out.logits, full.logits, atol=1e-5)
    assert kv.layers[0].keys.shape[-2] == longer.shape[1]


def test_an_in_place_weight_change_or_other_deltas_are_never_served_stale(tiny_llama) -> None:
    model = tiny_llama.eval()
    ids = torch.randint(10, 1000, (1, 30), generator=torch.Generator().manual_seed(1))
    delta = _delta(model, 2)
    cache = PrefixCache(2**24, min_tokens=8)
    with torch.inference_mode():
        cache.prefill(model, ids)
        cache.prefill(model, ids, (delta,))
        assert cache.match(model, ids)[0] == 29  # the same prompt: all but the last token (its logits are needed)
        assert cache.match(model, ids, (delta,))[0] == 29
        assert cache.match(model, ids, (_delta(model, 3),))[0] == 0  # other deltas: other KV
        model.model.layers[0].mlp.down_proj.weight.add_(1e-3)  # an in-place edit of the base weights
        assert cache.match(model, ids)[0] == 0 and cache.match(model, ids, (delta,))[0] == 0
        cache.prefill(model, ids)  # the next prompt stored drops the entries of the old weights
    assert len(cache) == 1


def test_decoding_on_a_reused_prefix_never_writes_to_the_stored_entry(tiny_llama, smol_tokenizer) -> None:
    model = tiny_llama.eval()
    ids = torch.randint(10, 1000, (1, 30), generator=torch.Generator().manual_seed(4))
    cache = PrefixCache(2**24, min_tokens=8)
    settings = GenerationSettings(max_new_tokens=6, ignore_eos=True)
    decoder = Decoder(model, smol_tokenizer, prefix_cache=cache)
    first = "".join(decoder.stream(ids, settings))
    entry = next(iter(cache._entries.values()))
    before = [t.clone() for t in entry.keys + entry.values]
    assert "".join(decoder.stream(ids, settings)) == first  # served from the entry, the same reply
    assert cache.stats()["hits"] == 1 and len(cache) == 1  # a repeated prompt is not stored twice
    assert all(torch.equal(a, b) for a, b in zip(before, entry.keys + entry.values))


def test_a_row_that_joins_a_batch_reuses_a_prefix_and_keeps_its_solo_tokens(tiny_llama, smol_tokenizer) -> None:
    model = tiny_llama.eval()
    gen = torch.Generator().manual_seed(5)
    base = torch.randint(10, 1000, (1, 24), generator=gen)
    prompts = [torch.cat([base, torch.randint(10, 1000, (1, n), generator=gen)], dim=1) for n in (5, 9)]
    settings = GenerationSettings(max_new_tokens=8, ignore_eos=True)
    solo = [Decoder(model, smol_tokenizer).stream(p, settings) for p in prompts]
    solo = ["".join(s) for s in solo]
    cache = PrefixCache(2**24, min_tokens=8)
    joined = iter([[(prompts[1], ())]])

    def admit(active: int) -> list:
        return next(joined, [])

    texts = BatchDecoder(model, smol_tokenizer, prefix_cache=cache).run([prompts[0]], settings, admit=admit)
    assert texts == solo
    assert cache.stats()["hits"] == 1 and cache.stats()["reused_tokens"] >= 24  # the joining row reused row 0's


def test_entries_stay_within_their_memory_and_bad_sizes_are_refused(tiny_llama) -> None:
    model = tiny_llama.eval()
    gen = torch.Generator().manual_seed(6)
    with torch.inference_mode():
        one = PrefixCache(2**24)
        one.prefill(model, torch.randint(10, 1000, (1, 20), generator=gen))
        size = one.nbytes
        cache = PrefixCache(int(size * 2.5), min_tokens=8)
        for _ in range(5):
            cache.prefill(model, torch.randint(10, 1000, (1, 20), generator=gen))
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    with torch.inference_mode():  # a prompt shorter than an entry, sharing only part of it, is kept beside it
        longer = torch.randint(10, 1000, (1, 30), generator=gen)
        cache.prefill(model, longer)
        cache.prefill(model, torch.cat([longer[:, :15], torch.randint(10, 1000, (1, 5), generator=gen)], dim=1))
    assert len(cache) == 2 and cache.stats()["reused_tokens"] >= 15
    with pytest.raises(InvalidRequest, match="max_bytes >= 0"):
        PrefixCache(-1)
