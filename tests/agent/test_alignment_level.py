"""The objective level on the real SmolLM2: a user's style weights realised by a DPO pole adapter merged into
their published adapter (agent.model_level.preference_handler, editing.alignment).

The concise pole is trained here once per module (12 prompts, 8 DPO steps at a higher learning rate than
``pllm align train`` uses) into the module's own model cache, so what is tested does not depend on poles trained
elsewhere on this machine.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from agent.model_level import adapter_store
from editing import GenerationSettings
from editing.alignment import PoleStore, PoleTrainConfig, pole_of, train_poles
from memory import ManualClock, utc
from memory.preferences import reply_scores

pytestmark = pytest.mark.slow

QUESTIONS = ["How do I bake bread?", "Why do cats purr?", "What causes rain?"]  # not among the training prompts
LONG = GenerationSettings(max_new_tokens=96, repetition_penalty=1.1)
FEW = PoleTrainConfig(n_prompts=12, steps=8, max_new_tokens=96, max_length=192, lr=5e-4)


@pytest.fixture(scope="module")
def pole_cache(tmp_path_factory, local_model) -> Path:
    """A model cache holding the concise pole of SmolLM2 (trained here)."""
    cache = tmp_path_factory.mktemp("pole-cache")
    run = train_poles(local_model, PoleStore(cache / "poles"), reply_scores, poles=[pole_of("verbosity", -1)],
                      config=FEW)
    assert list(run.trained) == ["verbosity.concise"] and run.trained["verbosity.concise"]["n_pairs"] >= 6
    return cache


def _stack(home: Path, cache: Path, local_model, embedder, at=utc(2026, 2, 1, 9), style_merge: str = "cat"):
    from agent.settings import Settings
    from agent.stack import build_stack

    settings = Settings(home=home, model_cache=cache, model_updates=True, adapter_refresh_every=0, style_watch=False,
                        max_new_tokens=64, style_merge=style_merge)
    return build_stack(settings, clock=ManualClock(at), local=local_model, embedder=embedder)


def _words(local, view, question: str) -> int:
    return len(local.generate([{"role": "user", "content": question}], LONG, view=view).split())


def _view(stack, user: str):
    return adapter_store(stack.settings.home).view(user, base_model_id=stack.local.model_id)


def test_a_short_answers_statement_moves_the_weight_and_the_users_model_answers_shorter(
        tmp_path, pole_cache, local_model, embedder) -> None:
    stack = _stack(tmp_path, pole_cache, local_model, embedder)
    try:
        before = stack.agent.chat("sam", QUESTIONS[0]).reply
        stack.memory.clock.advance(timedelta(minutes=5))
        stack.agent.chat("sam", "Please keep your answers short.")
        assert stack.agent.worker.wait_idle(300)
        assert stack.memory.preference_weights("sam")["verbosity"].weight == -1.0
        view = _view(stack, "sam")
        assert view is not None, [o.detail for o in stack.agent.worker.outcomes]
        pref = next(v for v in adapter_store(tmp_path).versions("sam") if v.published).extra["preference"]
        assert pref["merged"] == ["verbosity.concise"] and pref["mix"] == {"verbosity.concise": 1.0}
        # the model level alone: the same bare question (no instruction, no memory) with and without sam's adapter
        with_adapter = sum(_words(stack.local, view, q) for q in QUESTIONS)
        without = sum(_words(stack.local, None, q) for q in QUESTIONS)
        assert with_adapter < 0.6 * without, (with_adapter, without)
        # and the next reply of the agent itself
        stack.memory.clock.advance(timedelta(minutes=5))
        after = stack.agent.chat("sam", QUESTIONS[0]).reply
        assert len(after.split()) < len(before.split()), (before, after)
        # weights are per user: kim said nothing about style and is served the base model
        stack.agent.chat("kim", QUESTIONS[1])
        assert stack.agent.worker.wait_idle(60)
        assert stack.memory.preference_weights("kim")["verbosity"].weight == 0.0
        assert _view(stack, "kim") is None
    finally:
        stack.close()


def test_a_reversal_emits_preference_drift_and_a_failed_merge_keeps_the_published_adapter(
        tmp_path, pole_cache, local_model, embedder) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(pole_cache, cache)  # this test breaks its copy of the pole
    stack = _stack(tmp_path / "home", cache, local_model, embedder)
    try:
        stack.agent.chat("lee", "Keep it short, please.")
        assert stack.agent.worker.wait_idle(300)
        published = _view(stack, "lee")
        assert published is not None
        reply = stack.local.generate([{"role": "user", "content": QUESTIONS[2]}], LONG, view=published)

        stack.close()  # a restart (no merge cached in the process) with a broken pole file
        folder = PoleStore(cache / "poles").folder(local_model.model_id, pole_of("verbosity", -1))
        (folder / "adapter_model.safetensors").write_bytes(b"not tensors")
        stack = _stack(tmp_path / "home", cache, local_model, embedder, at=utc(2026, 2, 4, 9))
        stack.agent.chat("lee", "No need to be formal with me.")  # a new weight: concise + casual (not trained)
        assert stack.agent.worker.wait_idle(300)
        failed = [o for o in stack.agent.worker.outcomes if o.job.kind == "preference_weights" and o.status == "failed"]
        assert failed and "published adapter is unchanged" in failed[-1].detail
        still = _view(stack, "lee")
        assert still.version == published.version
        assert stack.local.generate([{"role": "user", "content": QUESTIONS[2]}], LONG, view=still) == reply

        stack.memory.clock.advance(timedelta(days=3))
        result = stack.agent.chat("lee", "Actually, more detail please.")
        drifts = [e for e in result.events if type(e).__name__ == "PreferenceDrift" and e.dimension == "verbosity"]
        assert drifts and drifts[0].before == "concise" and drifts[0].after == "detailed"
        assert stack.memory.preference_weights("lee")["verbosity"].weight == 1.0
    finally:
        stack.close()


def test_with_style_merge_mod_the_poles_are_fused_when_serving_and_the_replies_shorten(
        tmp_path, pole_cache, local_model, embedder) -> None:
    stack = _stack(tmp_path, pole_cache, local_model, embedder, style_merge="mod")
    try:
        stack.agent.chat("sam", "Please keep your answers short.")
        assert stack.agent.worker.wait_idle(300)
        published = _view(stack, "sam")
        assert published is not None, [o.detail for o in stack.agent.worker.outcomes]
        pref = published.extra["preference"]
        assert pref["combination"] == "mod" and pref["merged"] == ["verbosity.concise"]
        assert published.deltas == () and published.fusion == ()  # nothing merged into the stored adapter
        served = stack.agent.chat_model.view_for("sam")  # what the respond node runs with
        assert [w for w, _ in served.fusion] == [1.0]
        fused = sum(_words(stack.local, served, q) for q in QUESTIONS)
        without = sum(_words(stack.local, None, q) for q in QUESTIONS)
        assert fused < 0.6 * without, (fused, without)
        assert stack.agent.chat_model.view_for("kim") is None  # another user: the base model
    finally:
        stack.close()
