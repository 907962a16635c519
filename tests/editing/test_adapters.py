"""Per-user adapters: PEFT-format folders, the versioned store, and generation with a user's view.

Format and decoding mechanics run on a tiny llama built from a config; what a user would notice (their
reply changes, nobody else's does, the base stays the base) runs on the real SmolLM2.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from pathlib import Path

import pytest
import torch

from editing import (
    AdapterStore,
    GenerationSettings,
    InvalidRequest,
    LocalModel,
    LowRankDelta,
    StaleAdapter,
    UserView,
    apply_deltas,
    load_lora,
    save_lora,
)
from editing.generation import Decoder

SLOT_MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def random_delta(model: torch.nn.Module, name: str, rank: int = 1, scale: float = 1.0, seed: int = 0) -> LowRankDelta:
    """A random ``ΔW = B @ A`` on module ``name`` with entries of size ``scale``."""
    module = model.get_submodule(name)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, module.in_features, generator=gen) * scale
    b = torch.randn(module.out_features, rank, generator=gen) * scale
    return LowRankDelta(name, a, b)


def tiny_deltas(model: torch.nn.Module, scale: float = 0.3) -> list[LowRankDelta]:
    """Deltas on every projection type the fast step knows, two of them on one module."""
    deltas = [random_delta(model, f"model.layers.{i % 4}.{path}", rank=1 + i % 2, scale=scale, seed=i)
              for i, path in enumerate(SLOT_MODULES)]
    deltas.append(random_delta(model, "model.layers.2.mlp.down_proj", rank=1, scale=scale, seed=99))
    return deltas


# ---------------------------------------------------------------------------------------------- format


def test_saved_folder_is_a_peft_adapter_with_the_same_logits_as_the_hooks(tiny_llama, tmp_path: Path) -> None:
    from peft import PeftModel

    model = tiny_llama.eval()
    deltas = tiny_deltas(model)
    save_lora(tmp_path / "a", deltas, base_model_id="tiny", extra={"edits": 8})
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["rank_pattern"]["model.layers.2.mlp.down_proj"] == 2  # two rank-one deltas, concatenated
    assert config["rank_pattern"] == config["alpha_pattern"] and config["lora_dropout"] == 0.0
    meta = json.loads((tmp_path / "a" / "pllm.json").read_text())
    assert meta["base_model_id"] == "tiny" and meta["format"] == 1 and meta["extra"] == {"edits": 8}

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "a")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1)).to(model.device)
    with torch.no_grad():
        expected = peft_model(ids).logits
        with apply_deltas(model, deltas):
            hooked = model(ids).logits
        base = model(ids).logits
    assert (expected - base).abs().max() > 0.1  # the adapter does change the model...
    torch.testing.assert_close(hooked, expected, rtol=1e-4, atol=1e-4)  # ...exactly as our hooks do


def test_load_gives_one_delta_per_module_equal_to_the_sum(tiny_llama, tmp_path: Path) -> None:
    deltas = tiny_deltas(tiny_llama)
    save_lora(tmp_path / "a", deltas, base_model_id="tiny")
    loaded = {d.module: d for d in load_lora(tmp_path / "a", base_model_id="tiny")}
    assert len(loaded) == len({d.module for d in deltas}) == 7
    summed = sum(d.dense() for d in deltas if d.module == "model.layers.2.mlp.down_proj")
    torch.testing.assert_close(loaded["model.layers.2.mlp.down_proj"].dense(), summed)


def test_a_folder_for_another_base_is_stale_and_says_what_to_do(tiny_llama, tmp_path: Path) -> None:
    save_lora(tmp_path / "a", tiny_deltas(tiny_llama), base_model_id="base-1")
    with pytest.raises(StaleAdapter, match=r"made for base model 'base-1'.*'base-2'.*re-make"):
        load_lora(tmp_path / "a", base_model_id="base-2")


def test_missing_or_corrupt_folders_raise_clear_errors(tiny_llama, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="pllm.json is missing"):
        load_lora(tmp_path / "nowhere", base_model_id="tiny")
    save_lora(tmp_path / "a", tiny_deltas(tiny_llama), base_model_id="tiny")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InvalidRequest, match="corrupt"):
        load_lora(tmp_path / "a", base_model_id="tiny")
    (tmp_path / "a" / "pllm.json").write_text("{")
    with pytest.raises(InvalidRequest, match="corrupt"):
        load_lora(tmp_path / "a", base_model_id="tiny")


# ---------------------------------------------------------------------------------------------- decoding


def test_fast_decode_with_deltas_gives_peft_generate_tokens(tiny_llama, smol_tokenizer, tmp_path: Path) -> None:
    from peft import PeftModel

    model = tiny_llama.eval()
    deltas = tiny_deltas(model)
    save_lora(tmp_path / "a", deltas, base_model_id="tiny")
    ids = smol_tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    settings = GenerationSettings(max_new_tokens=20, ignore_eos=True)

    def tokens(fast: bool, with_deltas: bool) -> tuple[list[int], str | None]:
        decoder = Decoder(model, smol_tokenizer, fast_path=fast)
        list(decoder.stream(ids, settings, deltas=deltas if with_deltas else ()))
        return list(decoder.last_token_ids), decoder.last_path

    fast, fast_path = tokens(True, True)
    general, general_path = tokens(False, True)
    base, _ = tokens(True, False)
    assert (fast_path, general_path) == ("llama-fast", "model")  # an adapter does not leave the fast step
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "a")).eval()
    with torch.no_grad():
        out = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                                  min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert fast == general == out[0, ids.shape[1]:].tolist()
    assert fast != base
    assert not any(m._forward_hooks for m in model.modules())  # nothing left behind


def test_deltas_on_other_modules_take_the_general_path_and_log_why(tiny_llama, smol_tokenizer, caplog) -> None:
    model = tiny_llama.eval()
    head = LowRankDelta("lm_head", torch.randn(1, 64), torch.randn(model.config.vocab_size, 1))
    ids = smol_tokenizer("Hello", return_tensors="pt")["input_ids"]
    decoder = Decoder(model, smol_tokenizer)
    with caplog.at_level(logging.INFO, logger="editing.generation"):
        list(decoder.stream(ids, GenerationSettings(max_new_tokens=6, ignore_eos=True), deltas=[head]))
    assert decoder.last_path == "model"
    assert "lm_head" in caplog.text and "fast decode step off" in caplog.text


# ---------------------------------------------------------------------------------------------- store


def test_publish_rollback_and_forget(tiny_llama, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    deltas = tiny_deltas(tiny_llama)
    assert store.view("ann", base_model_id="tiny") is None
    assert store.publish("ann", deltas[:2], base_model_id="tiny", extra={"job": 1}) == 1
    assert store.publish("ann", deltas, base_model_id="tiny") == 2
    assert store.publish("bob", [], base_model_id="tiny") == 1  # "base model" version
    view = store.view("ann", base_model_id="tiny")
    assert isinstance(view, UserView) and view.version == 2 and len(view.deltas) == 7
    assert store.view("bob", base_model_id="tiny").deltas == ()
    assert [(v.version, v.published, v.extra) for v in store.versions("ann")] == [(1, False, {"job": 1}),
                                                                                  (2, True, {})]
    assert store.rollback("ann") == 1 and store.view("ann", base_model_id="tiny").version == 1
    with pytest.raises(InvalidRequest, match="nothing to roll back"):
        store.rollback("ann")
    assert store.rollback("ann", 2) == 2
    with pytest.raises(InvalidRequest, match="no version 7"):
        store.rollback("ann", 7)
    assert store.users() == ["ann", "bob"]
    store.forget("ann")
    assert store.view("ann", base_model_id="tiny") is None and store.versions("ann") == []
    assert store.users() == ["bob"]
    assert store.publish("ann", deltas[:1], base_model_id="tiny") == 1
    assert len(store.view("ann", base_model_id="tiny").deltas) == 1  # not the forgotten v1 from the cache


def test_stale_base_serves_the_base_model_with_a_warning(tiny_llama, tmp_path: Path, caplog) -> None:
    store = AdapterStore(tmp_path)
    store.publish("ann", tiny_deltas(tiny_llama), base_model_id="base-1")
    with caplog.at_level(logging.WARNING, logger="editing.adapters"):
        assert store.view("ann", base_model_id="base-2") is None
    assert "base-1" in caplog.text
    assert store.view("ann", base_model_id="base-1") is not None


def test_a_half_written_version_is_never_published(tiny_llama, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.publish("ann", tiny_deltas(tiny_llama)[:1], base_model_id="tiny")
    user_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    half = user_dir / "v000002"  # a writer that died before pllm.json
    half.mkdir()
    (half / "adapter_config.json").write_text("{}")
    assert [v.version for v in store.versions("ann")] == [1]
    assert store.view("ann", base_model_id="tiny").version == 1
    assert store.publish("ann", [], base_model_id="tiny") == 3  # never reuses the broken number
    assert store.rollback("ann") == 1  # skips the half-written folder


def test_a_corrupt_published_version_falls_back_to_the_base(tiny_llama, tmp_path: Path, caplog) -> None:
    store = AdapterStore(tmp_path)
    store.publish("ann", tiny_deltas(tiny_llama), base_model_id="tiny")
    user_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    (user_dir / "v000001" / "adapter_model.safetensors").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="editing.adapters"):
        assert AdapterStore(tmp_path).view("ann", base_model_id="tiny") is None
    assert "corrupt" in caplog.text


def test_a_second_store_on_the_same_root_sees_a_new_publish(tiny_llama, tmp_path: Path) -> None:
    reader, writer = AdapterStore(tmp_path), AdapterStore(tmp_path)
    writer.publish("ann", tiny_deltas(tiny_llama)[:1], base_model_id="tiny")
    assert reader.view("ann", base_model_id="tiny").version == 1
    writer.publish("ann", tiny_deltas(tiny_llama), base_model_id="tiny")
    assert reader.view("ann", base_model_id="tiny").version == 2
    writer.rollback("ann")
    assert reader.view("ann", base_model_id="tiny").version == 1


def test_user_ids_are_validated(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="user_id"):
        AdapterStore(tmp_path).publish("  ", [], base_model_id="tiny")


# ---------------------------------------------------------------------------------------------- real model

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = GenerationSettings(max_new_tokens=12)


def big_view(lm: LocalModel, user: str, seed: int) -> UserView:
    """A user whose adapter visibly changes SmolLM2's replies: a large delta on a middle layer's MLP."""
    delta = random_delta(lm.model, "model.layers.12.mlp.down_proj", rank=4, scale=3.0, seed=seed)
    return UserView(user_id=user, version=1, deltas=(delta,), base_model_id=lm.model_id)


def test_a_view_changes_the_reply_and_leaves_the_base_untouched(local_model: LocalModel) -> None:
    module = local_model.model.get_submodule("model.layers.12.mlp.down_proj")
    before = module.weight.detach().clone()
    base = local_model.generate(MESSAGES, SHORT)
    personal = local_model.generate(MESSAGES, SHORT, view=big_view(local_model, "ann", 0))
    assert personal != base
    assert local_model.generate(MESSAGES, SHORT) == base  # no hook leaks into the next request
    assert torch.equal(module.weight, before)
    assert not any(m._forward_hooks for m in local_model.model.modules())


def test_a_view_for_another_base_is_refused(local_model: LocalModel) -> None:
    view = UserView(user_id="ann", version=3, deltas=(), base_model_id="some-other-model")
    with pytest.raises(StaleAdapter, match="some-other-model"):
        local_model.generate(MESSAGES, SHORT, view=view)


def test_concurrent_users_each_get_their_own_reply(local_model: LocalModel) -> None:
    views = {"ann": big_view(local_model, "ann", 1), "bob": big_view(local_model, "bob", 2)}
    solo = {user: local_model.generate(MESSAGES, SHORT, view=view) for user, view in views.items()}
    assert solo["ann"] != solo["bob"]
    replies: dict[str, list[str]] = {user: [] for user in views}

    def chat(user: str) -> None:
        for _ in range(3):
            replies[user].append(local_model.generate(MESSAGES, SHORT, view=views[user]))

    threads = [threading.Thread(target=chat, args=(user,)) for user in views]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == {user: [solo[user]] * 3 for user in views}


def test_layers_combine_exactly_as_peft_cat(tiny_llama, tmp_path: Path) -> None:
    """The published adapter (edits + style, concatenated per module) equals PEFT's add_weighted_adapter 'cat'."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from editing.adapters import AdapterStore
    from editing.hooks import apply_deltas
    from editing.requests import LowRankDelta

    model = tiny_llama.eval()
    gen = torch.Generator().manual_seed(1)
    edits = [LowRankDelta("model.layers.1.mlp.down_proj", torch.randn(1, 128, generator=gen),
                          torch.randn(64, 1, generator=gen) * 0.1)]
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.v_proj": (64, 32), "mlp.down_proj": (128, 64)}  # in, out
    style = [LowRankDelta(f"model.layers.{i}.{name}", torch.randn(4, d_in, generator=gen) * 0.1,
                          torch.randn(d_out, 4, generator=gen) * 0.1)
             for i in range(2) for name, (d_in, d_out) in shapes.items()]  # layer 1's down_proj carries both
    store = AdapterStore(tmp_path / "adapters")
    store.publish("ann", edits + style, base_model_id="tiny")
    view = store.view("ann", base_model_id="tiny")
    ids = torch.randint(0, 100, (1, 12), generator=gen).to(model.device)
    with torch.no_grad(), apply_deltas(model, view.deltas):
        ours = model(ids).logits

    def config(ds):
        r = max(d.rank for d in ds)
        return LoraConfig(r=r, lora_alpha=r, target_modules=[d.module for d in ds], lora_dropout=0.0)

    def state(ds):
        return {f"base_model.model.{d.module}.lora_{x}.weight": getattr(d, x) for d in ds for x in "AB"}

    peft_model = get_peft_model(model, config(edits), adapter_name="edits")
    peft_model.add_adapter("style", config(style))
    set_peft_model_state_dict(peft_model, state(edits), adapter_name="edits")
    set_peft_model_state_dict(peft_model, state(style), adapter_name="style")
    peft_model.add_weighted_adapter(["edits", "style"], [1.0, 1.0], "combined", combination_type="cat")
    peft_model.set_adapter("combined")
    with torch.no_grad():
        theirs = peft_model(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), apply_deltas(model, edits):
        assert (model(ids).logits - theirs).abs().max() > 1e-3  # the style layer really is in the sum
