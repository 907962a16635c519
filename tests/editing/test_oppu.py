"""Per-user adapters (editing.oppu) on the real SmolLM2: training lowers the user's held-out loss, the base model
is left exactly as it was, LoRA results serve through the knowledge-edit view path, folders round-trip and a
stale adapter is never loaded, a refresh with replay keeps the old data's loss, bad configs fail clearly.

The model is shared by the whole session, so every test here also checks that training did not change it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from editing.errors import InvalidRequest, StaleAdapter
from editing.oppu import (AdapterTrainConfig, TrainExample, build_examples, encode, example_loss, load_adapter,
                          save_adapter, train_adapter)
from editing.oppu.data import IGNORE

# A user with an unmistakable way of writing: every turn a sea-dog's, whatever it is about.
_TOPICS = ["the weather today", "my breakfast", "the football match", "my new job", "the train ride",
           "my sister's wedding", "the dentist", "a good book", "the garden", "my old car", "the cinema", "a long walk"]
_DRIFT_TOPICS = ["the tax forms", "my piano lesson", "the quarterly report", "the bus strike"]


def _pirate(topics: list[str]) -> list[dict[str, str]]:
    dialogue = []
    for topic in topics:
        dialogue.append({"role": "assistant", "content": f"Tell me about {topic}."})
        dialogue.append({"role": "user", "content": f"Arr matey, {topic} be a fine tale o' the seven seas, yo ho ho!"})
    return dialogue


def _examples(topics: list[str]) -> list[TrainExample]:
    return build_examples(_pirate(topics), context_turns=1)


TRAIN, HELD_OUT, NEW = _examples(_TOPICS[:8]), _examples(_TOPICS[8:]), _examples(_DRIFT_TOPICS)
FAST = dict(epochs=2, batch_size=4, max_tokens=64, lr=3e-3)


def _state(model: torch.nn.Module) -> dict:
    return {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "modules": [(n, type(m)) for n, m in model.named_modules()],
            "grad_flags": [p.requires_grad for p in model.parameters()], "training": model.training}


def _assert_as_before(model: torch.nn.Module, before: dict) -> None:
    assert [(n, type(m)) for n, m in model.named_modules()] == before["modules"], "module structure changed"
    after = model.state_dict()
    assert after.keys() == before["weights"].keys()
    assert all(torch.equal(before["weights"][k], after[k]) for k in after), "base weights changed"
    assert [p.requires_grad for p in model.parameters()] == before["grad_flags"]
    assert model.training == before["training"]
    assert all(p.grad is None for p in model.parameters()), "gradients left on the base model"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"


@pytest.fixture(scope="module")
def lora(local_model):  # -> (TrainedAdapter, base state before training)
    model = local_model.model
    before = _state(model)
    adapter = train_adapter(model, local_model.tokenizer, TRAIN, AdapterTrainConfig(**FAST),
                            base_model_id=local_model.model_id)
    return adapter, before


# ---------------------------------------------------------------------------------- config and data (no model)


@pytest.mark.parametrize("bad, words", [
    (dict(kind="adalora"), "kind"), (dict(r=0), "r must"), (dict(epochs=0), "epochs"), (dict(lr=5.0), "lr"),
    (dict(target_modules="q_proj"), "not one string"), (dict(target_modules=("model.layers.{}.mlp",)), "layers"),
    (dict(dropout=1.0), "dropout"), (dict(replay_fraction=-1), "replay_fraction"), (dict(max_tokens=2), "max_tokens"),
    (dict(layers_to_transform=()), "layers_to_transform"), (dict(layers_to_transform=(1, -2)), "layers_to_transform"),
    (dict(kind="ia3", layers_to_transform=(1,)), "LoRA only"),
])
def test_bad_config_is_a_clear_error(bad, words):
    with pytest.raises(InvalidRequest, match=words):
        AdapterTrainConfig(**bad)


def test_templates_expand_over_layers_and_kinds_have_defaults():
    config = AdapterTrainConfig(target_modules=("model.layers.{}.self_attn.q_proj", "v_proj"), layers=(2, 5))
    assert config.modules() == ["model.layers.2.self_attn.q_proj", "model.layers.5.self_attn.q_proj", "v_proj"]
    ia3 = AdapterTrainConfig(kind="ia3")
    assert ia3.feedforward() == ["down_proj"] and "down_proj" in ia3.modules()
    assert AdapterTrainConfig(kind="prompt").learning_rate > AdapterTrainConfig().learning_rate
    assert AdapterTrainConfig.from_dict(config.to_dict()) == config


def test_the_refresh_config_trains_the_upper_half_and_round_trips():
    from editing.oppu import refresh_config

    config = refresh_config(30)
    assert config.kind == "lora" and config.layers_to_transform == tuple(range(15, 30))
    assert AdapterTrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidRequest, match="num_layers"):
        refresh_config(0)


def test_examples_come_from_own_turns_rated_replies_and_current_facts_only():
    dialogue = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "Hello!", "feedback": 1},
                {"role": "user", "content": "I moved to Lisbon"}, {"role": "assistant", "content": "Nice.", "feedback": -1}]
    current = SimpleNamespace(subject="user", relation="lives_in", object="Lisbon", category=None, kind="fact",
                              confidence=0.9, valid_to=None)
    superseded = SimpleNamespace(subject="user", relation="lives_in", object="Porto", category=None, kind="fact",
                                 confidence=0.9, valid_to="2026-01-01")
    examples = build_examples(dialogue, [superseded, current])
    by_source = {s: [e for e in examples if e.source == s] for s in ("own_turn", "rated_reply", "fact")}
    assert [e.target for e in by_source["own_turn"]] == ["hi there", "I moved to Lisbon"]
    assert by_source["own_turn"][1].context == (("user", "hi there"), ("assistant", "Hello!"))
    assert [e.target for e in by_source["rated_reply"]] == ["Hello!"]  # the reply rated down is not a target
    assert {e.target for e in by_source["fact"]} == {"You live in Lisbon."}  # never Porto
    assert by_source["fact"][0].context == (("user", "Where do I live?"),)
    with pytest.raises(InvalidRequest, match="sequence of turns"):
        build_examples({"role": "user", "content": "hi"})


def test_loss_is_on_the_target_span_only(smol_tokenizer):
    example = TRAIN[0]
    row = encode(smol_tokenizer, example, max_tokens=256)
    target = smol_tokenizer.decode([t for t in row.labels if t != IGNORE])
    assert target.startswith(example.target) and "Tell me about" not in target
    short = encode(smol_tokenizer, example, max_tokens=12)  # the context is cut first, from the left
    assert len(short.input_ids) == 12 and all(t != IGNORE for t in short.labels)


# ---------------------------------------------------------------------------------- training on SmolLM2


def test_lora_lowers_held_out_loss_and_leaves_the_base_as_it_was(local_model, lora):
    adapter, before = lora
    model, tok = local_model.model, local_model.tokenizer
    _assert_as_before(model, before)
    base, own = example_loss(model, tok, HELD_OUT), example_loss(model, tok, HELD_OUT, adapter)
    assert own < 0.85 * base, f"held-out loss {own:.3f} vs base {base:.3f}"
    _assert_as_before(model, before)
    assert adapter.base_model_id == local_model.model_id and not adapter.continued


def test_the_first_step_scores_targets_as_the_whole_model_does_and_layers_can_be_limited(local_model):
    """Training runs the LM head on the target positions only: its first loss (a fresh LoRA changes nothing yet)
    is the base model's mean NLL over the same targets, computed the usual way (all positions' logits)."""
    from editing.oppu import refresh_config

    model, tok = local_model.model, local_model.tokenizer
    config = refresh_config(model.config.num_hidden_layers)
    one_batch = TRAIN[:6]
    adapter = train_adapter(model, tok, one_batch, AdapterTrainConfig(**{**config.to_dict(), "epochs": 1,
                                                                            "batch_size": 6, "dropout": 0.0}),
                            base_model_id=local_model.model_id)
    assert adapter.losses[0] == pytest.approx(example_loss(model, tok, one_batch, max_tokens=config.max_tokens),
                                              abs=1e-3)
    layers = {int(d.module.split(".")[2]) for d in adapter.lora_deltas()}
    assert layers == set(config.layers_to_transform)


def test_lora_serves_through_the_edit_view_path(local_model, lora):
    """B·scaling and A as LowRankDeltas on hooks give the same loss as the PEFT-wrapped model."""
    from editing.hooks import apply_deltas

    adapter, _ = lora
    model, tok = local_model.model, local_model.tokenizer
    deltas = adapter.lora_deltas()
    assert {d.module.rsplit(".", 1)[1] for d in deltas} == {"q_proj", "v_proj"} and deltas[0].rank == 8
    with apply_deltas(model, deltas):
        hooked = example_loss(model, tok, HELD_OUT)
    assert hooked == pytest.approx(example_loss(model, tok, HELD_OUT, adapter), rel=1e-4)


def test_saved_folder_loads_back_in_peft_and_never_on_another_base(local_model, lora, tmp_path: Path):
    adapter, _ = lora
    model, tok = local_model.model, local_model.tokenizer
    save_adapter(tmp_path / "v1", adapter)
    assert {p.name for p in (tmp_path / "v1").iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                            "pllm.json"}
    again = load_adapter(tmp_path / "v1", base_model_id=local_model.model_id)
    assert again.config == adapter.config
    assert example_loss(model, tok, HELD_OUT, again) == pytest.approx(example_loss(model, tok, HELD_OUT, adapter))
    with pytest.raises(StaleAdapter, match="retrain"):
        load_adapter(tmp_path / "v1", base_model_id="some-other-base")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ia3", "prompt"])
def test_ia3_and_prompt_tuning_train_through_the_same_entry_point(local_model, kind, tmp_path: Path):
    model, tok = local_model.model, local_model.tokenizer
    before = _state(model)
    steps = []
    adapter = train_adapter(model, tok, TRAIN, AdapterTrainConfig(kind=kind, **{**FAST, "lr": None}),
                            progress=lambda step, total, loss: steps.append((step, total)))
    _assert_as_before(model, before)
    assert steps[-1] == (4, 4)
    assert example_loss(model, tok, HELD_OUT, adapter) < example_loss(model, tok, HELD_OUT)
    save_adapter(tmp_path / kind, adapter)
    again = load_adapter(tmp_path / kind, base_model_id=adapter.base_model_id)
    assert example_loss(model, tok, TRAIN[:2], again) == pytest.approx(example_loss(model, tok, TRAIN[:2], adapter))
    with pytest.raises(InvalidRequest, match="only a LoRA"):
        adapter.lora_deltas()


@pytest.mark.slow
def test_refresh_with_replay_keeps_the_old_datas_loss(local_model, lora):
    adapter, before = lora
    model, tok = local_model.model, local_model.tokenizer
    old_before = example_loss(model, tok, TRAIN, adapter)
    refreshed = train_adapter(model, tok, NEW, AdapterTrainConfig(**{**FAST, "replay_fraction": 1.0}), init=adapter,
                              replay=TRAIN, base_model_id=local_model.model_id)
    assert refreshed.continued and refreshed.n_replayed == len(NEW)
    old_after = example_loss(model, tok, TRAIN, refreshed)
    assert old_after < old_before + 0.15, f"old data's loss {old_before:.3f} → {old_after:.3f}"
    assert example_loss(model, tok, NEW, refreshed) < example_loss(model, tok, NEW, adapter)
    _assert_as_before(model, before)


def test_a_new_base_model_retrains_from_scratch_on_the_whole_history(local_model, lora):
    adapter, _ = lora
    model, tok = local_model.model, local_model.tokenizer
    config = AdapterTrainConfig(**{**FAST, "epochs": 1})
    retrained = train_adapter(model, tok, NEW[:1], config, init=adapter, replay=TRAIN[:3], base_model_id="new-base")
    assert not retrained.continued and retrained.n_replayed == 3 and retrained.base_model_id == "new-base"
    with pytest.raises(InvalidRequest, match="kind"):
        train_adapter(model, tok, NEW[:1], AdapterTrainConfig(kind="ia3"), init=adapter,
                      base_model_id=local_model.model_id)
    with pytest.raises(InvalidRequest, match="no training examples"):
        train_adapter(model, tok, [], config)


def test_anchor_examples_are_the_base_models_own_answers_and_change_nothing(local_model):
    from editing.chat_prompts import NEUTRAL_CHAT
    from editing.checks import closed_book_answer
    from editing.oppu import ANCHOR_QUESTIONS, anchor_examples

    before = {k: v.clone() for k, v in local_model.model.state_dict().items()}
    anchors = anchor_examples(local_model.model, local_model.tokenizer, ANCHOR_QUESTIONS[2:4], max_new_tokens=16)
    assert [a.context for a in anchors] == [(("user", q),) for q in ANCHOR_QUESTIONS[2:4]]
    assert all(a.role == "assistant" and a.source == "anchor" for a in anchors)
    assert anchors[1].target == closed_book_answer(local_model.model, local_model.tokenizer, ANCHOR_QUESTIONS[3],
                                                   max_new_tokens=16).strip()
    assert "Leonardo" in anchors[0].target and "100" in anchors[1].target  # what the adapter is trained to keep
    assert not set(ANCHOR_QUESTIONS) & set(NEUTRAL_CHAT)  # the measured general questions stay held out
    assert all(torch.equal(v, before[k]) for k, v in local_model.model.state_dict().items())
