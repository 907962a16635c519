"""The ``make_stack`` fixture: a whole pllm stack (real model, Chroma, graph, checkpointer) under a temp home.

Import it into a test module (``from tests.agent.stacks import make_stack``) to use it there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import Settings, build_stack
from editing import GenerationSettings
from memory import ManualClock, utc

SHORT = GenerationSettings(max_new_tokens=12, repetition_penalty=1.15)


@pytest.fixture()
def make_stack(tmp_path: Path, model_cache_dir: Path, local_model, embedder):
    stacks = []

    def make(home: Path | None = None, clock: ManualClock | None = None, **kwargs):
        # Model updates (knowledge edits, seconds each) only where a test asks for them: model_updates=True.
        # postgres_url=DSN: conversation threads in that Postgres database (tests/agent/test_postgres.py).
        chosen = {name: kwargs.pop(name) for name in ("postgres_url",) if name in kwargs}
        settings = Settings(home=home or tmp_path / "home", model_cache=model_cache_dir,
                            model_updates=kwargs.pop("model_updates", False), **chosen)
        stack = build_stack(settings, clock=clock or ManualClock(utc(2026, 1, 5, 9)), local=local_model,
                            embedder=embedder, generation=SHORT, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.close()
