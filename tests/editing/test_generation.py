"""Our decoding loop against transformers' own: greedy parity token for token, streaming, stops, sampling.

Runs on the real SmolLM2-135M-Instruct (session fixture ``local_model`` from tests/conftest.py).
"""

from __future__ import annotations

import copy

import pytest
import torch

from editing import GenerationSettings, LocalModel
from editing.errors import InvalidRequest
from editing.generation import Decoder, _LlamaStep, _ModelStep, _TextStream, eos_token_ids

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "List three uses of a paperclip, then explain which one is best and why.",
]
N_TOKENS = 40


def _reference_ids(lm: LocalModel, input_ids: torch.Tensor, n: int, model=None, **kwargs) -> list[int]:
    """Greedy continuation by ``model.generate``, end-of-reply token removed."""
    model = model or lm.model
    stops = sorted(eos_token_ids(lm.model, lm.tokenizer))
    out = model.generate(input_ids=input_ids, max_new_tokens=n, do_sample=False, eos_token_id=stops,
                         pad_token_id=stops[0], **kwargs)
    ids = out[0, input_ids.shape[1]:].tolist()
    return ids[:-1] if ids and ids[-1] in stops else ids


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "model-forward"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_model_generate_token_for_token(local_model: LocalModel, prompt: str, fast_path: bool) -> None:
    ids = local_model.encode_chat([{"role": "user", "content": prompt}])
    decoder = Decoder(local_model.model, local_model.tokenizer, fast_path=fast_path)
    text = "".join(decoder.stream(ids, GenerationSettings(max_new_tokens=N_TOKENS)))
    assert decoder.last_path == ("llama-fast" if fast_path else "model")
    expected = _reference_ids(local_model, ids, N_TOKENS)
    assert decoder.last_token_ids == expected
    assert text == local_model.tokenizer.decode(expected, skip_special_tokens=True)


def test_fast_step_logits_are_bit_identical_to_the_model_forward(local_model: LocalModel) -> None:
    from transformers import DynamicCache

    model = local_model.model
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[2]}])
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        fast = _LlamaStep(model, caches[0], capacity=ids.shape[1] + 8)
        ref = _ModelStep(model, caches[1], {})
        token = torch.tensor([[local_model.tokenizer.convert_tokens_to_ids("The")]])
        for pos in range(ids.shape[1], ids.shape[1] + 8):
            a, b = fast(token, pos), ref(token, pos)  # (1, V) each
            assert torch.equal(a, b), f"logits differ at position {pos}: max |diff| {(a - b).abs().max()}"
            token = a.argmax(-1, keepdim=True)


def test_stream_yields_pieces_that_join_to_the_generated_reply(local_model: LocalModel) -> None:
    messages = [{"role": "user", "content": PROMPTS[1]}]
    settings = GenerationSettings(max_new_tokens=30)
    pieces = list(local_model.stream(messages, settings))
    assert len(pieces) > 5 and all(pieces)
    assert "".join(pieces) == local_model.generate(messages, settings)


def test_stop_string_cuts_the_reply_before_it(local_model: LocalModel) -> None:
    messages = [{"role": "user", "content": PROMPTS[2]}]
    full = local_model.generate(messages, GenerationSettings(max_new_tokens=N_TOKENS))
    stop = full[len(full) // 2: len(full) // 2 + 4]  # a string that spans tokens mid-reply
    assert stop.strip(), full
    cut = local_model.generate(messages, GenerationSettings(max_new_tokens=N_TOKENS, stop=(stop, "never-seen")))
    assert cut == full[: full.index(stop)]


def test_text_stream_holds_back_a_partial_stop_string(local_model: LocalModel) -> None:
    tok = local_model.tokenizer
    ids = tok("Sure. User: hi\nUser: bye", add_special_tokens=False)["input_ids"]
    stream = _TextStream(tok, ("\nUser:",))
    shown = "".join(stream.push(i) for i in ids) + stream.finish()
    assert shown == "Sure. User: hi"
    # Without a stop every character comes out, multi-byte ones whole.
    ids = tok("café 🙂 naïve", add_special_tokens=False)["input_ids"]
    stream = _TextStream(tok, ())
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == "café 🙂 naïve"
    assert not any("\ufffd" in p for p in pieces)


def test_sampling_with_a_seed_is_reproducible(local_model: LocalModel) -> None:
    messages = [{"role": "user", "content": PROMPTS[1]}]
    def run(seed: int) -> str:
        return local_model.generate(messages, GenerationSettings(max_new_tokens=30, temperature=1.0, top_p=0.95,
                                                                 seed=seed))
    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_ignore_eos_generates_exactly_max_new_tokens(local_model: LocalModel) -> None:
    ids = local_model.encode_chat([{"role": "user", "content": "Say OK."}])
    decoder = Decoder(local_model.model, local_model.tokenizer)
    short = "".join(decoder.stream(ids, GenerationSettings(max_new_tokens=64)))
    assert len(decoder.last_token_ids) < 64, short  # the reply ends by itself...
    "".join(decoder.stream(ids, GenerationSettings(max_new_tokens=64, ignore_eos=True)))
    assert len(decoder.last_token_ids) == 64  # ...unless EOS is ignored


def test_hooks_and_model_kwargs_fall_back_to_the_model_forward(local_model: LocalModel) -> None:
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    decoder = Decoder(local_model.model, local_model.tokenizer)
    calls: list[int] = []
    handle = local_model.model.model.layers[3].register_forward_hook(lambda *_: calls.append(1))
    try:
        text = "".join(decoder.stream(ids, GenerationSettings(max_new_tokens=5)))
    finally:
        handle.remove()
    assert decoder.last_path == "model" and len(calls) == 5  # prefill + 4 steps: the hook saw every forward
    plain = Decoder(local_model.model, local_model.tokenizer)
    assert text == "".join(plain.stream(ids, GenerationSettings(max_new_tokens=5)))
    assert plain.last_path == "llama-fast"  # hook removed: the fast step is back


def test_peft_wrapped_model_with_adapter_names_matches_peft_generate(local_model: LocalModel) -> None:
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(local_model.model)  # get_peft_model edits the model in place: keep the shared one clean
    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter visibly changes the output.
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config).eval()
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[1]}])
    decoder = Decoder(peft_model, local_model.tokenizer)
    text = "".join(decoder.stream(ids, GenerationSettings(max_new_tokens=20), adapter_names=["default"]))
    assert decoder.last_path == "model"
    expected = _reference_ids(local_model, ids, 20, model=peft_model, adapter_names=["default"])
    assert decoder.last_token_ids == expected
    base_decoder = Decoder(local_model.model, local_model.tokenizer)
    plain = "".join(base_decoder.stream(ids, GenerationSettings(max_new_tokens=20)))
    assert text != plain  # the adapter really was applied


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"stop": "User:"}, "wrap it"),
    ({"stop": ("",)}, "non-empty"),
])
def test_invalid_settings_raise_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        GenerationSettings(**kwargs)


def test_input_must_be_one_sequence(local_model: LocalModel) -> None:
    decoder = Decoder(local_model.model, local_model.tokenizer)
    with pytest.raises(InvalidRequest, match=r"shape \(1, T\)"):
        list(decoder.stream(torch.ones(2, 3, dtype=torch.long), GenerationSettings()))


def test_fast_step_with_a_user_adapter_matches_the_hooked_model_forward(local_model: LocalModel) -> None:
    from editing import LowRankDelta

    gen = torch.Generator().manual_seed(0)
    deltas = [LowRankDelta(f"model.layers.{layer}.{path}", torch.randn(2, n_in, generator=gen) * 0.1,
                           torch.randn(n_out, 2, generator=gen) * 0.1)
              for layer, path, n_in, n_out in [(4, "mlp.down_proj", 1536, 576), (4, "mlp.down_proj", 1536, 576),
                                               (10, "self_attn.q_proj", 576, 576), (20, "mlp.up_proj", 576, 1536)]]
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[1]}])
    settings = GenerationSettings(max_new_tokens=24)
    runs = {}
    for fast in (True, False):
        decoder = Decoder(local_model.model, local_model.tokenizer, fast_path=fast)
        list(decoder.stream(ids, settings, deltas=deltas))
        runs[decoder.last_path] = list(decoder.last_token_ids)
    plain = Decoder(local_model.model, local_model.tokenizer)
    list(plain.stream(ids, settings))
    assert runs["llama-fast"] == runs["model"]  # the adapter stays on the fast path, with the same tokens
    assert runs["llama-fast"] != plain.last_token_ids  # and it really is applied
