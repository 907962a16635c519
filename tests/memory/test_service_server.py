"""The memory facade against a real Chroma server (``chroma run`` on loopback): remember, recall, forget."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from memory import ManualClock, Memory, MemoryConfig, UnknownUser, utc
from tests.memory.chroma_server import chroma_server  # noqa: F401 - pytest fixture


def test_remember_recall_forget_through_a_chroma_server(chroma_server, tmp_path: Path, embedder) -> None:  # noqa: F811
    host, port = chroma_server
    config = MemoryConfig(home=tmp_path / "home", chroma_url=f"http://{host}:{port}", collection_prefix="srv")
    clock = ManualClock(utc(2024, 4, 1))
    with Memory(config, embedder=embedder, clock=clock) as mem:
        assert not (tmp_path / "home" / "chroma").exists()  # the server holds the vectors, not the home
        mem.remember("sam", "I live in Oslo")
        mem.remember("sam", "I like sailing on the fjord")
        mem.remember("kim", "I like sailing too, but I live in Perth")
        clock.advance(timedelta(days=7))
        mem.remember("sam", "I moved to Bergen")

        rec = mem.recall("sam", "where do I live and what do I do on weekends?")
        assert {f.object for f in rec.profile if f.relation == "lives_in"} == {"Bergen"}
        assert "I like sailing on the fjord" in [e.text for e in rec.episodes]
        assert all("Perth" not in e.text for e in rec.episodes)  # kim's turn is never sam's

        removed = mem.forget("sam")
        assert removed["episodes"] == 3 and removed["episodes_index"] == 3 and removed["semantic_items"] >= 3
        assert mem.episodic.ids("sam") == [] and mem.semantic.ids("sam") == []
        with pytest.raises(UnknownUser):
            mem.export("sam")
        assert mem.recall("sam", "sailing").episodes == []
        assert [e.text for e in mem.recall("kim", "sailing").episodes] == ["I like sailing too, but I live in Perth"]

    with Memory(config, embedder=embedder, clock=clock) as mem:  # a new process-side object, same server data
        assert mem.users() == ["kim"]
        assert mem.episodic.ids("kim") and mem.episodic.ids("sam") == []
