"""Pole adapters (objective level) on a tiny llama built from a config, with the real SmolLM2 tokenizer.

DPO itself runs for real (TRL + PEFT) on the tiny model: what these tests check is the plumbing a user relies
on — a trained pole is stored for its base model only, the weighted merge is PEFT's exact sum and leaves the
model as it was, a failed merge touches nothing, and MOD fusion decodes what its policies say. That a pole
changes the style of SmolLM2's replies is tested on the real model (tests/agent/test_alignment_level.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editing.alignment import (PoleStore, PoleTrainConfig, PreferencePair, fused_decode, merge_poles, pole_deltas,
                               pole_mix, pole_of, train_pole)
from editing.errors import InvalidRequest, StaleAdapter
from tests.editing.conftest import assert_unchanged, snapshot

TINY = PoleTrainConfig(r=4, alpha=8.0, steps=3, batch_size=2, max_length=48, lr=1e-2)
PAIRS = [PreferencePair("How do I make tea?", "Boil water, add tea.", "Tea is a drink with a long history in many "
                        "countries, and making it well takes care, patience and good leaves."),
         PreferencePair("Why is the sky blue?", "Scattered sunlight.", "Sunlight is made of many colours, and as it "
                        "passes through the air the short blue waves scatter the most, so the sky looks blue."),
         PreferencePair("What is a volcano?", "A mountain that erupts.", "A volcano is an opening in the crust "
                        "through which molten rock, ash and gases escape from below the surface.")]


@pytest.fixture()
def tiny_folder(tiny_llama, smol_tokenizer, tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    tiny_llama.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def poles(tiny_folder: Path, smol_tokenizer, tmp_path: Path) -> PoleStore:
    """Both verbosity poles trained (3 DPO steps each) for the tiny base ``tiny``."""
    store = PoleStore(tmp_path / "poles")
    for sign in (-1, 1):
        pole = pole_of("verbosity", sign)
        pairs = PAIRS if sign < 0 else [PreferencePair(p.prompt, p.rejected, p.chosen) for p in PAIRS]
        store.save(train_pole(tiny_folder, smol_tokenizer, pole, pairs, base_model_id="tiny", config=TINY, device="cpu"))
    return store


def test_weights_pick_the_pole_they_lean_to_and_bad_weights_are_refused() -> None:
    assert pole_mix({"verbosity": -0.5, "formality": 1.0, "expertise": 0}) == {"verbosity.concise": 0.5,
                                                                                 "formality.formal": 1.0}
    for bad in ({"verbosity": 1.5}, {"tone": 0.5}, {"verbosity": True}, {"verbosity": "high"}):
        with pytest.raises(InvalidRequest):
            pole_mix(bad)


def test_a_trained_pole_is_stored_for_its_base_model_only(poles: PoleStore, tiny_llama) -> None:
    concise = pole_of("verbosity", -1)
    assert [p.key for p in poles.available("tiny")] == ["verbosity.concise", "verbosity.detailed"]
    assert poles.available("another-base") == []
    loaded = poles.load("tiny", concise)
    assert loaded.n_pairs == 3 and len(loaded.losses) == TINY.steps
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in loaded.state.items()), "DPO did not train"
    meta = poles.meta("tiny", concise)
    assert meta["base_model_id"] == "tiny" and meta["extra"]["kind"] == "dpo_pole" and meta["pllm_version"]
    with pytest.raises(InvalidRequest, match="pllm align train"):
        poles.load("another-base", concise)
    # a folder copied under another base's name is refused, not served
    import shutil

    shutil.copytree(poles.folder("tiny", concise), poles.folder("other", concise))
    with pytest.raises(StaleAdapter):
        poles.load("other", concise)


def test_the_cat_merge_is_the_exact_weighted_sum_and_leaves_the_model_as_it_was(poles: PoleStore, tiny_llama) -> None:
    before = snapshot(tiny_llama)
    modules = {n: type(m) for n, m in tiny_llama.named_modules()}
    flags = {n: p.requires_grad for n, p in tiny_llama.named_parameters()}
    assert tiny_llama.training and all(flags.values())
    mix = {"verbosity.concise": 0.7, "verbosity.detailed": 0.2}
    merged = {d.module: d.dense() for d in merge_poles(tiny_llama, poles, "tiny", mix)}
    assert_unchanged(tiny_llama, before)
    assert {n: type(m) for n, m in tiny_llama.named_modules()} == modules, "PEFT layers left in the model"
    assert {n: p.requires_grad for n, p in tiny_llama.named_parameters()} == flags and tiny_llama.training
    expected: dict[str, torch.Tensor] = {}
    for key, w in mix.items():
        for d in pole_deltas(poles.load("tiny", pole_of("verbosity", -1 if key.endswith("concise") else 1))):
            expected[d.module] = expected.get(d.module, 0) + w * d.dense()
    assert merged.keys() == expected.keys() and len(merged) == 4 * 5
    for module, dense in expected.items():
        torch.testing.assert_close(merged[module], dense, rtol=1e-5, atol=1e-7)
    svd = merge_poles(tiny_llama, poles, "tiny", mix, combination="svd", svd_rank=4)
    assert all(d.rank == 4 for d in svd)
    assert merge_poles(tiny_llama, poles, "tiny", {}) == []


def test_a_merge_that_cannot_load_a_pole_fails_before_touching_the_model(poles: PoleStore, tiny_llama) -> None:
    before = snapshot(tiny_llama)
    (poles.folder("tiny", pole_of("verbosity", 1)) / "adapter_model.safetensors").write_bytes(b"not tensors")
    with pytest.raises(InvalidRequest, match="corrupt"):
        merge_poles(tiny_llama, poles, "tiny", {"verbosity.concise": 0.5, "verbosity.detailed": 0.5})
    with pytest.raises(InvalidRequest, match="pllm align train"):
        merge_poles(tiny_llama, poles, "tiny", {"formality.formal": 1.0})
    assert_unchanged(tiny_llama, before)
    assert not any("lora" in n for n, _ in tiny_llama.named_modules())


def test_mod_fusion_decodes_what_its_policies_say(poles: PoleStore, tiny_llama, smol_tokenizer) -> None:
    from editing.batch_decode import decode_batch
    from editing.generation import GenerationSettings

    tiny_llama.eval()
    settings = GenerationSettings(max_new_tokens=12, ignore_eos=True)
    prompts = [smol_tokenizer(t, return_tensors="pt")["input_ids"] for t in ("Hello there", "The sky is blue because")]
    concise = pole_deltas(poles.load("tiny", pole_of("verbosity", -1)))
    # no pole: the base policy alone; λ = 1 on one pole: that pole's policy alone (greedy, token for token)
    assert fused_decode(tiny_llama, smol_tokenizer, prompts, [[], []], settings) == \
        decode_batch(tiny_llama, smol_tokenizer, prompts, settings)
    assert fused_decode(tiny_llama, smol_tokenizer, prompts, [[(1.0, concise)], []], settings) == \
        decode_batch(tiny_llama, smol_tokenizer, prompts, settings, [concise, []])
    with pytest.raises(InvalidRequest):
        fused_decode(tiny_llama, smol_tokenizer, prompts, [[]], settings)


def test_a_user_served_by_mod_gets_the_fused_reply_streamed_batched_and_alone(
        poles: PoleStore, tiny_llama, smol_tokenizer, tmp_path: Path, caplog) -> None:
    """``PLLM_STYLE_MERGE=mod`` on the serving side: the published version records its poles and weights,
    PoleFusion puts them on the user's view, and every way LocalModel answers gives the fused reply."""
    from editing import GenerationSettings, LocalModel
    from editing.adapters import AdapterStore
    from editing.alignment import PoleFusion
    from editing.device import DevicePlan

    tiny_llama.eval()
    local = LocalModel(tiny_llama, smol_tokenizer, model_id="tiny",
                       plan=DevicePlan(device=tiny_llama.device, dtype=tiny_llama.dtype), source="tiny")
    settings = GenerationSettings(max_new_tokens=10, ignore_eos=True)
    store = AdapterStore(tmp_path / "adapters")
    key = "verbosity.concise"
    store.publish("ana", [], base_model_id="tiny",
                  extra={"preference": {"weights": {"verbosity": -0.8}, "mix": {key: 0.8}, "merged": [key],
                                        "combination": "mod", "poles": poles.fingerprint("tiny", [pole_of("verbosity", -1)])}})
    fusion = PoleFusion(poles)
    view = fusion.apply(store.view("ana", base_model_id="tiny"))
    assert view is not None and [w for w, _ in view.fusion] == [0.8]
    turns = [{"role": "user", "content": "Tell me about the sea."}]
    ids = local.encode_chat(turns)
    concise = pole_deltas(poles.load("tiny", pole_of("verbosity", -1)))
    expected = fused_decode(tiny_llama, smol_tokenizer, [ids], [[(0.8, concise)]], settings)[0]
    plain = local.generate(turns, settings)
    assert expected != plain  # the pole moves this reply: the checks below can tell fused from plain
    assert "".join(local.stream(turns, settings, view=view)) == expected
    assert local.generate(turns, settings, view=view) == expected
    local.enable_batching(20.0, 4)
    try:  # batching on: the fused view still decodes fused (it does not join the plain batch)
        assert local.generate(turns, settings, view=view) == expected
    finally:
        local.batcher = None
    # one batch with a fused user and a plain one: each gets what it gets alone
    assert local.generate_batch([(turns, view), (turns, None)], settings) == [expected, plain]
    # a pole deleted after publishing: the user is served without it, with a warning, and nothing raises
    import shutil

    shutil.rmtree(poles.folder("tiny", pole_of("verbosity", -1)))
    still = PoleFusion(poles).apply(store.view("ana", base_model_id="tiny"))
    assert still is not None and still.fusion == () and "cannot be loaded" in caplog.text
    assert local.generate(turns, settings, view=still) == plain
    # a version merged by weights is served as it is
    store.publish("ana", [], base_model_id="tiny", extra={"preference": {"combination": "cat", "merged": [key]}})
    assert fusion.apply(store.view("ana", base_model_id="tiny")).fusion == ()


def test_the_instructed_answers_are_kept_for_the_same_prompts_and_settings_only(tmp_path: Path) -> None:
    from editing.alignment import DimensionAnswers

    store = PoleStore(tmp_path / "poles")
    answers = DimensionAnswers("verbosity", ("Q1?", "Q2?"), ("Short.", "Brief."), ("A long answer.", "Longer one."),
                               (1.0, 1.0), (3.0, 2.0))
    store.save_answers("tiny", answers, TINY)
    assert store.load_answers("tiny", "verbosity", ("Q1?", "Q2?"), TINY) == answers
    assert answers.kept == (0, 1)
    import dataclasses

    assert store.load_answers("tiny", "verbosity", ("Q1?",), TINY) is None  # other prompts
    assert store.load_answers("tiny", "verbosity", ("Q1?", "Q2?"), dataclasses.replace(TINY, max_new_tokens=9)) is None
    assert store.load_answers("other", "verbosity", ("Q1?", "Q2?"), TINY) is None
    assert store.load_answers("tiny", "formality", ("Q1?", "Q2?"), TINY) is None


def test_the_poles_are_the_dimensions_memory_keeps_weights_on() -> None:
    from editing.alignment import DIMENSIONS, INSTRUCTIONS, MILD_INSTRUCTIONS
    from memory.relations import DIMENSIONS as MEMORY_DIMENSIONS

    assert dict(DIMENSIONS) == dict(MEMORY_DIMENSIONS)  # editing does not import memory: kept equal here
    poles = {p for pair in DIMENSIONS.values() for p in pair}
    assert set(INSTRUCTIONS) == poles == set(MILD_INSTRUCTIONS)
