"""Per-user style adapters kept alive, on the real SmolLM2 with small data (agent.adapter_level).

A refresh trains the user's LoRA on their own turns and current facts and publishes it with their edits; the
next refresh continues from it with a replay sample; rollback restores the previous version's outputs; a
style adapter made on another base is marked stale and retrained from scratch when a stack starts; a river
detector over each turn's perplexity under the user's adapter fires ``StyleDrift`` when their language
changes, and the refresh job it queues runs. The combination of layers equals PEFT's ``cat``.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agent.adapter_level import AdapterRefresher
from agent.model_level import ModelWorkspace, adapter_store, style_store
from editing import GenerationSettings
from editing.oppu import ANCHOR_QUESTIONS, AdapterTrainConfig
from memory import ManualClock, utc
from tests.agent.stacks import make_stack  # noqa: F401 - a fixture

GREEDY = GenerationSettings(max_new_tokens=12)
SMALL = AdapterTrainConfig(epochs=1, batch_size=4, max_tokens=64, lr=3e-3, r=4)

_TOPICS = ["the weather today", "my breakfast", "the football match", "my new job", "the train ride",
           "my sister's wedding", "the dentist", "a good book", "the garden", "my old car"]
_LATER = ["the harbour", "my parrot", "the storm last night", "the old map"]
_FORMAL = ["I would be grateful if you could review the attached quarterly tax statement before Friday.",
           "Please find enclosed the minutes of the board meeting held on the fourteenth of March.",
           "Kindly confirm receipt of the invoice and advise whether payment has been scheduled.",
           "The committee has resolved that the annual audit shall be conducted in the second quarter.",
           "We regret to inform you that the application does not meet the eligibility requirements.",
           "Furthermore, the contractor is obliged to submit a detailed report upon completion.",
           "I am writing to request a formal extension of the deadline for the pension documentation.",
           "Please note that the revised procedures take effect from the first day of next month.",
           "The department cannot process reimbursement claims without the original receipts.",
           "In accordance with the regulations, all employees must complete the compliance training.",
           "We would appreciate your assistance in reconciling the discrepancies in the ledger.",
           "The tenant shall notify the landlord in writing no later than thirty days in advance."]


def _pirate(topic: str) -> str:
    return f"Arr matey, {topic} be a fine tale o' the seven seas, yo ho ho!"


def _say(stack, user: str, lines: list[str], *, watch: bool = False) -> None:
    """Record the user's turns (as the ``remember`` node does); ``watch``: also hand them to the turn watchers,
    as the ``adapt`` node does."""
    for text in lines:
        stack.memory.clock.advance(timedelta(minutes=3))
        stack.memory.remember(user, text)
        if watch:
            stack.agent.worker.observe(user, text, stack.memory.clock.now())


def _logits(local, view, text: str = "Tell me about your day.") -> torch.Tensor:
    from editing.hooks import apply_deltas

    ids = local.encode_chat([{"role": "user", "content": text}])
    with local.lock, torch.no_grad(), apply_deltas(local.model, view.deltas if view else ()):
        return local.model(ids).logits


@pytest.fixture(scope="module")
def home_stack(tmp_path_factory, model_cache_dir, local_model, embedder):
    """A stack with model updates on and the automatic triggers off (the tests drive refreshes themselves)."""
    from agent.settings import Settings
    from agent.stack import build_stack

    home = tmp_path_factory.mktemp("adapter-level")
    settings = Settings(home=home, model_cache=model_cache_dir, model_updates=True, adapter_refresh_every=0,
                        style_watch=False, max_new_tokens=8)
    stack = build_stack(settings, clock=ManualClock(utc(2026, 1, 5, 9)), local=local_model, embedder=embedder)
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def refreshed(home_stack):  # -> (refresher, first report, second report, view after each)
    refresher = home_stack.agent.worker.handlers["adapter_refresh"]
    refresher.config = SMALL
    _say(home_stack, "pete", [_pirate(t) for t in _TOPICS])
    first = refresher.refresh("pete")
    view1 = home_stack.agent.chat_model.view_for("pete")
    _say(home_stack, "pete", [_pirate(t) for t in _LATER])
    second = refresher.refresh("pete")
    view2 = home_stack.agent.chat_model.view_for("pete")
    return refresher, first, second, view1, view2


@pytest.mark.slow  # two small trainings on the real model, shared by the tests below
def test_a_refresh_trains_on_the_users_turns_and_the_next_one_continues_with_replay(home_stack, refreshed) -> None:
    refresher, first, second, view1, view2 = refreshed
    assert first.style_version == 1 and not first.continued and first.n_new == len(_TOPICS)
    assert first.n_anchors == second.n_anchors == len(ANCHOR_QUESTIONS)  # generated once, trained in every refresh
    assert second.style_version == 2 and second.continued
    assert second.n_new == len(_LATER) and second.n_replayed > 0  # only the new turns, plus a replay sample
    assert view1 is not None and view2 is not None and view2.version > view1.version
    assert {d.module.rsplit(".", 1)[-1] for d in view2.deltas} == {"q_proj", "v_proj"}  # the LoRA's targets
    # The adapter learned the user's language: their next pirate turn is likelier under it than under the base.
    said = _pirate("the lighthouse")
    assert refresher.turn_nll("pete", said) < refresher.turn_nll("nobody", said) - 0.2
    # Nothing new → nothing trained, nothing published.
    again = refresher.refresh("pete")
    assert again.style_version is None and "no new turns" in again.reason
    assert home_stack.agent.chat_model.view_for("pete").version == view2.version


@pytest.mark.slow
def test_the_scenario_adapter_expectation_reads_the_published_layers(home_stack, refreshed) -> None:
    from agent.scenarios.expectations import CheckContext, check
    from agent.scenarios.format import parse_scenario

    scenario = parse_scenario(
        "name: adapter check\nuser: pete\nsessions:\n  - at: '2026-01-05'\n    expect:\n"
        "      - adapter: {kind: style, min_version: 2}\n      - adapter: {kind: style, min_version: 9}\n"
        "      - adapter: {kind: edits}\n      - adapter: {kind: style, user: nobody}\n", source="adapter.yaml")
    ctx = CheckContext(home_stack, scenario, scenario.sessions[0])
    outcomes = [check(ctx, e) for e in scenario.sessions[0].expect]
    assert [o.passed for o in outcomes] == [True, False, False, False], [o.detail for o in outcomes]
    assert "style layer v2" in outcomes[0].detail and "wanted style v9" in outcomes[1].detail
    assert "0 edit(s)" in outcomes[2].detail and "no adapter published" in outcomes[3].detail


@pytest.mark.slow
def test_rollback_restores_the_previous_versions_outputs_and_the_cli_lists_and_rolls_back(home_stack, refreshed,
                                                                                           local_model) -> None:
    from agent.cli import app

    _, _, _, view1, view2 = refreshed
    before = local_model.generate([{"role": "user", "content": "Tell me about your day."}], GREEDY, view=view1)
    assert not torch.equal(_logits(local_model, view1), _logits(local_model, view2))
    env = {"PLLM_HOME": str(home_stack.settings.home), "PLLM_MODEL_CACHE": str(home_stack.settings.model_cache)}
    runner = CliRunner()
    listed = runner.invoke(app, ["adapters", "list", "--user", "pete", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "style_version" in listed.output and '"stale": false' in listed.output
    rolled = runner.invoke(app, ["adapters", "rollback", "--user", "pete"], env=env)
    assert rolled.exit_code == 0 and f"v{view1.version}" in rolled.output, rolled.output
    view = home_stack.agent.chat_model.view_for("pete")
    assert view.version == view1.version
    torch.testing.assert_close(_logits(local_model, view), _logits(local_model, view1), rtol=0, atol=0)
    assert local_model.generate([{"role": "user", "content": "Tell me about your day."}], GREEDY, view=view) == before
    # The next refresh continues from the rolled-back style layer (v1), not from the abandoned v2.
    _say(home_stack, "pete", [_pirate("the crow's nest")])
    report = home_stack.agent.worker.handlers["adapter_refresh"].refresh("pete")
    meta = style_store(home_stack.settings.home).latest("pete")
    assert report.continued and meta.extra["previous_version"] == 1
    bad = runner.invoke(app, ["adapters", "rollback", "--user", "pete", "--to", "99"], env=env)
    assert bad.exit_code != 0 and "no version 99" in bad.output
    # A knowledge-edit publish (here: with no edits) keeps the user's style layer in the published adapter.
    latest = home_stack.agent.chat_model.view_for("pete")
    number = home_stack.agent.worker.handlers["adapter_refresh"].workspace.editor.publish("pete")
    after = home_stack.agent.chat_model.view_for("pete")
    assert after.version == number > latest.version
    torch.testing.assert_close(_logits(local_model, after), _logits(local_model, latest), rtol=0, atol=0)


def test_too_little_history_or_a_non_lora_kind_is_refused_clearly(home_stack) -> None:
    from editing.errors import InvalidRequest

    refresher = home_stack.agent.worker.handlers["adapter_refresh"]
    _say(home_stack, "newbie", ["Hello there.", "I like tea."])
    report = refresher.refresh("newbie")
    assert report.style_version is None and "needs 8" in report.reason
    assert adapter_store(home_stack.settings.home).versions("newbie") == []
    with pytest.raises(InvalidRequest, match="LoRA"):
        AdapterRefresher(refresher.workspace, AdapterTrainConfig(kind="ia3"))
    with pytest.raises(InvalidRequest, match="refresh_every"):
        AdapterRefresher(refresher.workspace, refresh_every=-1)


@pytest.mark.slow  # one small training, then a from-scratch retrain by the worker
def test_a_style_adapter_from_another_base_is_stale_and_retrained_from_scratch(tmp_path: Path, model_cache_dir,
                                                                              local_model, embedder) -> None:
    from agent.settings import Settings
    from agent.stack import build_stack
    from editing.oppu import train_adapter
    from editing.oppu.data import own_turn_examples

    home = tmp_path / "home"
    settings = Settings(home=home, model_cache=model_cache_dir, model_updates=True, adapter_refresh_every=0,
                        style_watch=False)
    stack = build_stack(settings, clock=ManualClock(utc(2026, 1, 5, 9)), local=local_model, embedder=embedder)
    _say(stack, "pete", [_pirate(t) for t in _TOPICS[:8]])
    stack.close()
    # A style adapter trained on another base, published as pete's current version.
    examples = own_turn_examples([{"role": "user", "content": _pirate(t)} for t in _TOPICS[:4]])
    old = train_adapter(local_model.model, local_model.tokenizer, examples, SMALL, base_model_id="an-older-base")
    number = style_store(home).save("pete", dataclasses.replace(old, extra={"trained_through": None}))
    adapter_store(home).publish("pete", old.lora_deltas(), base_model_id="an-older-base",
                                extra={"kind": "edits+style", "edits": [], "style_version": number})
    assert stack.agent.chat_model.view_for("pete") is None  # never served on this base

    stack = build_stack(settings, clock=ManualClock(utc(2026, 1, 6, 9)), local=local_model, embedder=embedder)
    try:
        refresher = stack.agent.worker.handlers["adapter_refresh"]
        refresher.config = SMALL
        assert refresher.stale_users() == ["pete"]
        assert stack.agent.worker.wait_idle(600)  # the refresh queued at start-up runs
        (job,) = [j for j in stack.agent.worker.store.list("pete") if j.kind == "adapter_refresh"]
        assert job.state == "done" and "from scratch" in job.detail and "base model is now" in job.summary[0]
        latest = style_store(home).latest("pete")
        assert latest.version == 2 and latest.base_model_id == local_model.model_id
        assert refresher.stale_users() == []
        view = stack.agent.chat_model.view_for("pete")
        assert view is not None and view.base_model_id == local_model.model_id
    finally:
        stack.close()


@pytest.mark.slow  # a small training, then ~25 scored turns
def test_a_change_of_language_fires_style_drift_and_the_refresh_job_runs(tmp_path: Path, model_cache_dir,
                                                                        local_model, embedder) -> None:
    from agent.settings import Settings
    from agent.stack import build_stack

    settings = Settings(home=tmp_path / "home", model_cache=model_cache_dir, model_updates=True,
                        adapter_refresh_every=0, style_watch=True)
    stack = build_stack(settings, clock=ManualClock(utc(2026, 1, 5, 9)), local=local_model, embedder=embedder)
    try:
        refresher = stack.agent.worker.handlers["adapter_refresh"]
        refresher.config = dataclasses.replace(SMALL, epochs=4)  # a clear style: pirate turns ≈ 1 nat/token
        _say(stack, "pete", [_pirate(t) for t in _TOPICS])
        assert refresher.refresh("pete").style_version == 1
        stable = [_pirate(t) for t in ["the rum barrel", "my wooden leg", "the treasure chest", "the crow's nest",
                                       "the plank", "the mermaid", "the cannon", "the anchor", "the gulls",
                                       "the tide"]]
        _say(stack, "pete", stable, watch=True)
        assert refresher.wait_idle(120)
        assert not [j for j in stack.agent.worker.store.list("pete") if j.kind == "adapter_refresh"], \
            "a user writing as always must not look like a drift"
        _say(stack, "pete", _FORMAL, watch=True)
        assert refresher.wait_idle(120)
        assert stack.agent.worker.wait_idle(600)
        jobs = [j for j in stack.agent.worker.store.list("pete") if j.kind == "adapter_refresh"]
        assert jobs and any("style drift in perplexity" in s for j in jobs for s in j.summary), \
            [(j.summary, j.state) for j in jobs]
        assert all(j.state == "done" for j in jobs) and "style adapter v2" in jobs[-1].detail
    finally:
        stack.close()


def test_the_adapt_node_hands_each_user_turn_to_the_watchers(make_stack) -> None:
    seen: list[tuple[str, str]] = []
    stack = make_stack()
    stack.agent.worker.watchers.append(lambda user, text, at: seen.append((user, text, at)))
    stack.agent.chat("ann", "Good morning!")
    assert [(u, t) for u, t, _ in seen] == [("ann", "Good morning!")]
    assert seen[0][2].year == 2026  # the turn's time on the stack's (manual) clock


def test_liked_replies_become_training_targets_and_a_retracted_like_does_not(tmp_path: Path, embedder) -> None:
    """The refresh's data (``user_examples``): own turns, the replies whose newest rating is a like, split into new
    and replay at the time the style layer was trained through. Memory only: no model is needed."""
    from agent.adapter_level import user_examples
    from memory import Memory, MemoryConfig

    clock = ManualClock(utc(2026, 1, 5, 9))
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        ids = []
        for said, reply in (("Name a quiet beach.", "Praia da Adraga, near Sintra."),
                            ("And a lively one?", "Carcavelos, with surfers all day."),
                            ("A beach for kids?", "Praia da Rainha: calm, shallow water.")):
            clock.advance(timedelta(minutes=2))
            mem.remember("ann", said)
            ids.append(mem.remember("ann", reply, role="assistant").episode.id)
        mem.rate("ann", ids[0], 1)
        mem.rate("ann", ids[1], 1)
        mem.rate("ann", ids[2], -1)
        clock.advance(timedelta(minutes=1))
        mem.rate("ann", ids[1], -1)  # she changed her mind about the lively one

        new, old, newest = user_examples(mem, "ann", None)
        liked = [ex for ex in new if ex.source == "rated_reply"]
        assert [ex.target for ex in liked] == ["Praia da Adraga, near Sintra."]
        assert liked[0].role == "assistant" and liked[0].context[-1] == ("user", "Name a quiet beach.")
        assert sum(ex.source == "own_turn" for ex in new) == 3 and old == []

        since = newest  # as a style layer trained now would record it
        clock.advance(timedelta(hours=1))
        mem.rate("ann", ids[2], 1)  # a like given after the layer was trained is new data
        new, old, _ = user_examples(mem, "ann", since)
        assert [(ex.source, ex.target) for ex in new] == [("rated_reply", "Praia da Rainha: calm, shallow water.")]
        assert {ex.source for ex in old} == {"own_turn", "rated_reply"} and len(old) == 4
