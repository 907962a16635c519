"""The model level end to end on the real SmolLM2: a user's facts become edits in that user's adapter.

A turn that states or changes a fact queues a knowledge-edit job (the durable worker, fed from the fact
log); the job computes the edit on the worker's private copy of the model, checks it, publishes the user's
adapter; the user's next turn — and their closed-book questions — run with it. Other users see the base.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from editing import GenerationSettings
from memory import ManualClock, utc

REPO = Path(__file__).resolve().parents[2]
GREEDY = GenerationSettings(max_new_tokens=24)


def _ask(stack, user: str, question: str) -> str:
    """The user's own model, closed book: their published adapter, no memory, no profile."""
    view = stack.agent.chat_model.view_for(user)
    return stack.local.generate([{"role": "user", "content": question}], GREEDY, view=view)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, model_cache_dir, local_model, embedder):  # -> (stack, answers)
    """One home: Ann lives in Oslo, then Lisbon (each change waited for); Bob says nothing. (The three-value
    chain Oslo → Bergen → Lisbon is the bundled scenario tests/scenarios/closed_book_chain.yaml.)"""
    from agent.settings import Settings
    from agent.stack import build_stack

    home = tmp_path_factory.mktemp("model-level")
    stack = build_stack(Settings(home=home, model_cache=model_cache_dir, model_updates=True, max_new_tokens=8),
                        clock=ManualClock(utc(2026, 1, 5, 9)), local=local_model, embedder=embedder)
    base_answer = _ask(stack, "ann", "Where do I live?")
    answers = {}
    for city in ("Oslo", "Lisbon"):
        stack.agent.chat("ann", f"I live in {city}." if city == "Oslo" else f"I moved to {city}.")
        assert stack.agent.worker.wait_idle(600)
        answers[city] = _ask(stack, "ann", "Where do I live?")
    yield stack, base_answer, answers
    stack.close()


@pytest.mark.slow  # two real edits (about a minute each on 2 CPU cores) shared by the tests below
def test_a_stated_fact_is_answered_closed_book_by_the_users_own_model(chain) -> None:
    stack, base_answer, answers = chain
    assert "Oslo" not in base_answer
    assert "Oslo" in answers["Oslo"], answers
    jobs = stack.agent.worker.store.list("ann")
    assert jobs and all(j.state == "done" for j in jobs), [(j.state, j.error) for j in jobs]


@pytest.mark.slow
def test_a_fact_that_changes_ends_on_the_new_value_with_one_active_edit(chain) -> None:
    from agent.model_level import edit_registry

    stack, _, answers = chain
    assert "Lisbon" in answers["Lisbon"] and "Oslo" not in answers["Lisbon"]
    registry = edit_registry(stack.settings.home)
    try:
        edits = registry.list("ann")
    finally:
        registry.close()
    active = [e for e in edits if e.state == "active"]
    assert [e.target for e in active] == ["Lisbon"]
    assert {e.target: e.state for e in edits if e.relation == "lives_in"} == {"Oslo": "replaced", "Lisbon": "active"}


@pytest.mark.slow
def test_another_user_keeps_the_base_model(chain) -> None:
    stack, base_answer, _ = chain
    assert stack.agent.chat_model.view_for("bob") is None
    assert _ask(stack, "bob", "Where do I live?") == base_answer


@pytest.mark.slow
def test_the_users_next_turn_runs_with_their_adapter_and_undo_restores_the_base_logits(chain) -> None:
    from agent.model_level import open_editor

    stack, _, _ = chain
    from langchain_core.messages import HumanMessage

    view = stack.agent.chat_model.view_for("ann")
    assert view is not None and view.deltas
    served = stack.agent.chat_model.invoke([HumanMessage("Where do I live?")], user_id="ann", settings=GREEDY)
    assert served.content == _ask(stack, "ann", "Where do I live?")  # what the respond node gets for ann
    ids = stack.local.encode_chat([{"role": "user", "content": "Where do I live?"}])
    with torch.no_grad():
        base = stack.local.model(ids).logits
    from editing.hooks import apply_deltas

    with torch.no_grad(), apply_deltas(stack.local.model, view.deltas):
        edited = stack.local.model(ids).logits
    assert (edited - base).abs().max() > 1e-3  # the adapter really changes this user's model
    editor = open_editor(stack.local, stack.settings, private=False)
    (active,) = editor.registry.active("ann")
    editor.undo("ann", active.id)
    after = stack.agent.chat_model.view_for("ann")
    assert after is not None and after.version > view.version and not after.deltas
    with torch.no_grad(), apply_deltas(stack.local.model, after.deltas):
        undone = stack.local.model(ids).logits
    torch.testing.assert_close(undone, base)


_CRASH_IN_PUBLISH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from datetime import datetime, timezone
    from editing import LocalModel, RuntimeConfig
    from editing.ft_l import FTLHyperParams
    from editing.personal import KnowledgeEditor
    from agent.model_level import adapter_store, edit_registry
    from memory import Fact

    home, cache = Path(sys.argv[1]), Path(sys.argv[2])
    # A real edit, kept short (two steps, no check): the point is where the process dies.
    editor = KnowledgeEditor(LocalModel.load(RuntimeConfig(cache_dir=cache, threads=1)), edit_registry(home),
                             adapter_store(home), method="ft_l", hparams=FTLHyperParams(num_steps=2), check=False)
    def die(*args, **kwargs):
        os._exit(7)  # the process dies while publishing the new version
    editor.adapters.publish = die
    t = datetime(2026, 1, 5, tzinfo=timezone.utc)
    fact = Fact(user_id="ann", subject="user", relation="lives_in", object="Lisbon", valid_from=t, recorded_at=t,
                id="fact_lisbon")
    editor.sync("ann", [fact])
""")


@pytest.mark.slow  # one real edit in a subprocess
def test_a_crash_while_publishing_leaves_the_published_version_intact(tmp_path: Path, model_cache_dir: Path) -> None:
    from editing.adapters import AdapterStore

    home = tmp_path / "home"
    store = AdapterStore(home / "adapters")
    before = store.publish("ann", [], base_model_id="SmolLM2-135M-Instruct/" + "x")  # a known version to keep
    proc = subprocess.run([sys.executable, "-c", _CRASH_IN_PUBLISH, str(home), str(model_cache_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 7, proc.stderr[-2000:]
    versions = AdapterStore(home / "adapters").versions("ann")
    assert [v.version for v in versions if v.published] == [before]
    from editing.user_edits import EditRegistry

    registry = EditRegistry(home)
    assert registry.list("ann") == []  # rows are written after the publish: the redo starts clean
    registry.close()
