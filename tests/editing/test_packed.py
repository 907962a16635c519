"""bf16 decoding on CPU from pre-packed weights (editing/packed.py), on a bf16 copy of the real SmolLM2.

The packed copies must change nothing but the speed: the same logits as the model's own forward, the same tokens
as unpacked decoding, alone and in a batch, and an in-place change of a weight is seen at once.
"""

from __future__ import annotations

import copy

import pytest
import torch

from editing import GenerationSettings, LocalModel
from editing.batch_decode import BatchDecoder
from editing.generation import Decoder, _LlamaStep, _ModelStep
from editing.packed import packing_reason

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "List three uses of a paperclip, then explain which one is best and why."]

_REASON = packing_reason("cpu", torch.bfloat16)
needs_packing = pytest.mark.skipif(_REASON is not None, reason=f"bf16 weights are not packed here: {_REASON}")


@pytest.fixture(scope="module")
def bf16_model(local_model: LocalModel):  # -> the real model's bf16 copy, eval mode
    model = copy.deepcopy(local_model.model).to(torch.bfloat16)
    model.eval()
    return model


def _steps(model, ids: torch.Tensor, n: int) -> tuple[_LlamaStep, _ModelStep, int]:
    from transformers import DynamicCache

    caches = [DynamicCache(config=model.config) for _ in range(2)]
    for cache in caches:
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return _LlamaStep(model, caches[0], capacity=ids.shape[1] + n), _ModelStep(model, caches[1], {}), ids.shape[1]


@needs_packing
def test_packed_step_gives_the_model_forwards_logits(local_model: LocalModel, bf16_model) -> None:
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[2]}])
    with torch.inference_mode():
        fast, ref, start = _steps(bf16_model, ids, 8)
        assert fast.packed is not None  # bf16 on the CPU: the packed weights are in use
        token = torch.tensor([[local_model.tokenizer.convert_tokens_to_ids("The")]])
        for pos in range(start, start + 8):
            a, b = fast(token, pos), ref(token, pos)
            assert torch.equal(a, b), f"logits differ at position {pos}: max |diff| {(a.float() - b.float()).abs().max()}"
            token = a.argmax(-1, keepdim=True)


def test_fp32_weights_are_never_packed(local_model: LocalModel) -> None:
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    with torch.inference_mode():
        fast, _, _ = _steps(local_model.model, ids, 2)
    assert fast.packed is None  # fp32 decodes from the model's own tensors, no copies


@needs_packing
def test_packing_off_gives_the_same_tokens(local_model: LocalModel, bf16_model, monkeypatch) -> None:
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[1]}])
    settings = GenerationSettings(max_new_tokens=24)
    runs = []
    for off in ("1", "0"):
        monkeypatch.setenv("PLLM_PACKED_LINEAR", off)
        decoder = Decoder(bf16_model, local_model.tokenizer)
        list(decoder.stream(ids, settings))
        assert decoder.last_path == "llama-fast"
        runs.append(list(decoder.last_token_ids))
    assert runs[0] == runs[1] and len(runs[0]) > 5


@needs_packing
def test_a_bf16_batch_decodes_the_same_tokens_packed_or_not(local_model: LocalModel, bf16_model, monkeypatch) -> None:
    # (In bf16 a padded row's tokens may differ from its solo run's, packed or not: the prefill's rounding depends
    # on the padding. So the check here is that packing adds no difference of its own, batch for batch.)
    prompts = [local_model.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    settings = GenerationSettings(max_new_tokens=20)
    runs = []
    for off in ("1", "0"):
        monkeypatch.setenv("PLLM_PACKED_LINEAR", off)
        batch = BatchDecoder(bf16_model, local_model.tokenizer)
        batch.run(prompts, settings)
        assert batch.last_path == "llama-fast"
        runs.append([list(ids) for ids in batch.last_token_ids])
    assert runs[0] == runs[1] and all(len(ids) > 5 for ids in runs[0])


@needs_packing
@pytest.mark.parametrize("module", ["mlp.down_proj", "self_attn.k_proj"], ids=["packed-alone", "packed-in-a-group"])
def test_an_in_place_weight_change_is_seen_by_the_next_step(local_model: LocalModel, bf16_model, module: str) -> None:
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    token = torch.tensor([[local_model.tokenizer.convert_tokens_to_ids("The")]])
    down = bf16_model.model.layers[5].get_submodule(module).weight
    original = down.detach().clone()
    try:
        with torch.inference_mode():
            before, _, start = _steps(bf16_model, ids, 2)
            first = before(token, start)
        with torch.no_grad():
            down.mul_(3.0)  # a (wild) edit in place: the version counter moves, the storage stays
        with torch.inference_mode():
            after, ref, start = _steps(bf16_model, ids, 2)
            a, b = after(token, start), ref(token, start)
        assert after.packed is not before.packed  # repacked
        assert torch.equal(a, b)  # from the edited weight, as the model's own forward sees it
        assert not torch.equal(a, first)
    finally:
        with torch.no_grad():
            down.copy_(original)


@needs_packing
def test_a_packed_group_gives_each_projections_own_numbers(bf16_model) -> None:
    # A layer's q, k and v (and its gate and up) are packed as one stacked matrix: one product, and each slice
    # is bit for bit what that projection gives alone, for one row and for a batch.
    import torch.nn.functional as F

    from editing.packed import PackedLinears

    layer = bf16_model.model.layers[3]
    groups = [(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
              (layer.mlp.gate_proj, layer.mlp.up_proj)]
    packed = PackedLinears([m for g in groups for m in g], groups)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows in (1, 3, 4):
            x = torch.randn(rows, 1, layer.self_attn.q_proj.in_features, generator=gen).to(torch.bfloat16)
            for group in groups:
                outs = packed.linears(x, group)
                assert [o.shape[-1] for o in outs] == [m.out_features for m in group]
                for out, m in zip(outs, group):
                    assert torch.equal(out, F.linear(x, m.weight)), f"{rows} rows: a grouped projection differs"


@needs_packing
def test_a_group_with_a_bias_is_packed_one_by_one_and_not_again_at_every_step() -> None:
    from editing.packed import packed_linears

    model = torch.nn.Module()
    q, k = torch.nn.Linear(64, 32, bias=True).to(torch.bfloat16), torch.nn.Linear(64, 16).to(torch.bfloat16)
    first = packed_linears(model, [q, k], [(q, k)])
    assert first is not None and first.groups == []  # biases are not stacked: each projection alone
    assert packed_linears(model, [q, k], [(q, k)]) is first  # the next step reuses the packed copies
    x = torch.randn(2, 1, 64).to(torch.bfloat16)
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(first.linears(x, (q, k)), (q(x), k(x))))


@needs_packing
def test_deltas_on_grouped_projections_decode_as_unpacked(local_model: LocalModel, bf16_model, monkeypatch) -> None:
    from editing import LowRankDelta

    gen = torch.Generator().manual_seed(3)

    def delta(name: str) -> LowRankDelta:
        n_out, n_in = bf16_model.get_submodule(name).weight.shape
        return LowRankDelta(name, torch.randn(2, n_in, generator=gen) * 0.2, torch.randn(n_out, 2, generator=gen) * 0.2)

    deltas = [delta("model.layers.2.self_attn.v_proj"), delta("model.layers.4.mlp.up_proj")]
    ids = local_model.encode_chat([{"role": "user", "content": PROMPTS[1]}])
    settings = GenerationSettings(max_new_tokens=16)
    runs = []
    for off, with_deltas in (("1", True), ("0", True), ("1", False)):
        monkeypatch.setenv("PLLM_PACKED_LINEAR", off)
        decoder = Decoder(bf16_model, local_model.tokenizer)
        list(decoder.stream(ids, settings, deltas if with_deltas else []))
        assert decoder.last_path == "llama-fast"
        runs.append(list(decoder.last_token_ids))
    assert runs[0] == runs[1]  # the user's terms on a grouped projection: as without packing
    assert runs[0] != runs[2]  # and they were applied


def test_the_device_plan_says_whether_bf16_decoding_is_packed(monkeypatch) -> None:
    from editing.device import DevicePlan

    plan = DevicePlan(torch.device("cpu"), torch.bfloat16)
    assert DevicePlan(torch.device("cpu"), torch.float32).describe() == "cpu (float32)"
    expected = "cpu (bfloat16, packed linears)" if _REASON is None else f"cpu (bfloat16, not packed: {_REASON})"
    assert plan.describe() == expected
    monkeypatch.setenv("PLLM_PACKED_LINEAR", "0")
    assert plan.describe() == "cpu (bfloat16, not packed: PLLM_PACKED_LINEAR=0)"
