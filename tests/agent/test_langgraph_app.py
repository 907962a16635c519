"""``langgraph.json`` names a graph factory LangGraph's server can load: importing it does no I/O, and it builds
pllm's personal graph (recall → respond → remember → adapt) from the environment, without a checkpointer, once."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from agent import Settings
from tests.agent.stacks import SHORT
from tests.test_import_no_io import PROBE

REPO = Path(__file__).resolve().parents[2]
NODES = {"recall", "respond", "remember", "adapt"}


def _entry() -> tuple[ModuleType, str]:
    """The module and attribute ``langgraph.json`` names, loaded from its file as LangGraph's server does."""
    config = json.loads((REPO / "langgraph.json").read_text())
    assert config["dependencies"] == ["."]
    path, _, attr = config["graphs"]["pllm"].rpartition(":")
    spec = importlib.util.spec_from_file_location("pllm_langgraph_entry", REPO / path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, attr


def test_langgraph_json_names_a_factory_whose_import_does_no_io(tmp_path: Path) -> None:
    module, attr = _entry()
    assert callable(getattr(module, attr)) and module._built is None  # nothing built at import
    probe = PROBE.replace("import memory, editing, agent, editing.oppu, editing.oppu.io", "import agent.langgraph_app")
    assert probe != PROBE
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_factory_builds_the_personal_graph_once_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_cache_dir: Path, local_model, embedder) -> None:
    module, attr = _entry()
    monkeypatch.setenv("PLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PLLM_MODEL_CACHE", str(model_cache_dir))
    monkeypatch.setenv("PLLM_MODEL_UPDATES", "0")
    monkeypatch.setenv("PLLM_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")  # the server keeps the threads
    monkeypatch.setenv("PLLM_MAX_NEW_TOKENS", str(SHORT.max_new_tokens))
    # the session's model and embedder instead of loading them again; the settings still come from the environment
    monkeypatch.setattr(module, "build_server_graph",
                        functools.partial(module.build_server_graph, local=local_model, embedder=embedder))
    try:
        factory = getattr(module, attr)
        graph = asyncio.run(factory())  # the server awaits it
        assert asyncio.run(factory()) is graph  # built once, then reused
        stack = module._built[1]
        assert stack.settings.home == tmp_path / "home" and stack.settings.postgres_url is None
        assert NODES <= set(graph.get_graph().nodes)
        assert graph.checkpointer is None and graph.name == "pllm"
        # a run as the server makes it: the context as a plain dict
        out = graph.invoke({"messages": [HumanMessage("I live in Lisbon.")]}, context={"user_id": "ana"})
        assert isinstance(out["messages"][-1], AIMessage) and out["reply_id"]
        assert [e.text for e in stack.memory.episodes("ana")][:1] == ["I live in Lisbon."]
    finally:
        module.close()
    assert module._built is None


def test_the_servers_checkpointer_is_told_pllms_state_types() -> None:
    """The server checkpoints pllm's records in the state: langgraph.json allows the same types as pllm's own
    checkpointers (agent.graph.checkpoint_serde)."""
    from agent.graph import _STATE_TYPES

    config = json.loads((REPO / "langgraph.json").read_text())
    allowed = config["checkpointer"]["serde"]["allowed_msgpack_modules"]
    assert [tuple(pair) for pair in allowed] == list(_STATE_TYPES)


def test_build_server_graph_takes_explicit_settings(tmp_path: Path, model_cache_dir: Path, local_model,
                                                    embedder) -> None:
    from agent.langgraph_app import build_server_graph

    settings = Settings(home=tmp_path / "home", model_cache=model_cache_dir, model_updates=False)
    graph, stack = build_server_graph(settings, local=local_model, embedder=embedder, generation=SHORT)
    try:
        assert NODES <= set(graph.get_graph().nodes) and graph.checkpointer is None
        assert stack.local is local_model
    finally:
        stack.close()
