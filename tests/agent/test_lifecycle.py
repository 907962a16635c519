"""One registry of a user's data: export, import and forget cover memory, threads and store namespaces."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, messages_to_dict
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from agent import Settings
from agent.errors import InvalidDocument, NoUserData, UserDataError
from agent.lifecycle import MemoryPart, StorePart, ThreadsPart, UserData, open_user_data
from agent.threads import ThreadRegistry
from memory import ManualClock, Memory, MemoryConfig, utc
from memory.langgraph_store import ChromaStore
from tests.agent.stacks import make_stack  # noqa: F401 - pytest fixture


def _messages(part: ThreadsPart, user: str, session: str) -> list[str]:
    sessions = (part.export(user) or {"sessions": []})["sessions"]
    return [m["data"]["content"] for s in sessions if s["session_id"] == session for m in s["messages"]]


def _threads_doc(*sessions: tuple[str, list[str]]) -> dict:
    def convo(texts: list[str]) -> list:
        return messages_to_dict([(HumanMessage if i % 2 == 0 else AIMessage)(t) for i, t in enumerate(texts)])

    return {"sessions": [{"session_id": s, "messages": convo(texts)} for s, texts in sessions]}


@pytest.fixture()
def memory(tmp_path: Path, embedder):
    with Memory(MemoryConfig(home=tmp_path / "mem"), embedder=embedder, clock=ManualClock(utc(2026, 1, 5))) as mem:
        yield mem


def test_export_forget_import_round_trip_covers_memory_threads_and_store(make_stack) -> None:
    store = InMemoryStore()
    stack = make_stack(store=store)
    agent = stack.agent
    agent.chat("ana", "I live in Lisbon and I love surfing.", session_id="s1")
    agent.chat("ana", "What do I love?", session_id="s2")
    store.put(("users", "ana", "notes"), "n1", {"text": "waves at dawn"})
    store.put(("users", "anabel", "notes"), "n1", {"text": "someone else"})
    before = [m.content for m in agent.last_turn("ana", "s1")["messages"]]

    doc = json.loads(json.dumps(agent.export("ana")))  # JSON all the way through
    assert doc["format"] == "pllm.user.export" and doc["version"] == 1 and doc["user_id"] == "ana"
    assert set(doc["parts"]) == {"memory", "threads", "store", "model"}
    assert [s["session_id"] for s in doc["parts"]["threads"]["sessions"]] == ["s1", "s2"]
    # model_updates is off here: the knowledge-edit jobs were recorded as skipped, and they are ana's data too
    model = doc["parts"]["model"]
    assert model["edits"] == [] and model["jobs"] and {j["state"] for j in model["jobs"]} == {"skipped"}

    removed = stack.user_data.forget("ana")
    assert removed["threads"] == {"threads": 2} and removed["store"] == {"store_items": 1}
    assert removed["model"] == {"edits": 0, "adapter_versions": 0, "style_versions": 0, "jobs": len(model["jobs"])}
    assert removed["memory"]["episodes"] == 4
    with pytest.raises(NoUserData, match="nothing is stored about user 'ana'"):
        agent.export("ana")
    assert agent.last_turn("ana", "s1") == {} and store.get(("users", "anabel", "notes"), "n1") is not None

    assert agent.import_(doc) == {"memory": 4, "threads": 4, "store": 1, "model": 0}  # edits are recomputed
    assert [m.content for m in agent.last_turn("ana", "s1")["messages"]] == before
    assert store.get(("users", "ana", "notes"), "n1").value == {"text": "waves at dawn"}
    turn = agent.chat("ana", "Where do I live?", session_id="s1")  # the conversation goes on where it was
    assert len(agent.last_turn("ana", "s1")["messages"]) == 4 and "I live in Lisbon." in str(turn.prompt[-1].content)


def test_import_under_a_new_user_id_moves_threads_and_store_items() -> None:
    # Memory.import_ under a new id is 8A's; this covers the parts of the agent layer.
    store = InMemoryStore()
    threads = ThreadsPart(ThreadRegistry(), InMemorySaver())
    data = UserData([threads, StorePart(store)])
    threads.import_(_threads_doc(("s1", ["I like tea.", "Noted."])), user_id="ana")
    store.put(("users", "ana", "prefs"), "drink", {"v": "tea"})
    doc = data.export("ana")
    assert data.import_(doc, user_id="bo") == {"threads": 2, "store": 1}
    assert _messages(threads, "bo", "s1") == ["I like tea.", "Noted."]
    assert store.get(("users", "bo", "prefs"), "drink").value == {"v": "tea"}
    assert _messages(threads, "ana", "s1") == ["I like tea.", "Noted."]  # the source user is untouched


def test_a_failed_import_is_rolled_back_and_touches_nothing_already_stored(memory) -> None:
    threads = ThreadsPart(ThreadRegistry(), InMemorySaver())
    data = UserData([MemoryPart(memory), threads])
    memory.remember("ana", "I live in Lisbon.")
    threads.import_(_threads_doc(("s1", ["I live in Lisbon.", "Nice!"])), user_id="ana")
    doc = data.export("ana")
    memory.forget("ana")  # memory is empty again, the thread stays
    with pytest.raises(UserDataError, match="failed in part 'threads'.*already has conversation threads") as err:
        data.import_(doc)
    assert "memory) was removed again" in str(err.value)
    assert memory.episodes("ana") == [] and memory.profile("ana") == []  # the memory part was rolled back
    assert _messages(threads, "ana", "s1") == ["I live in Lisbon.", "Nice!"]  # what was stored is untouched


def test_forget_erases_the_other_parts_when_one_fails_and_says_which(memory) -> None:
    store = InMemoryStore()
    registry = ThreadRegistry()
    data = UserData([MemoryPart(memory), ThreadsPart(registry, InMemorySaver()), StorePart(store)])
    memory.remember("ana", "I live in Lisbon.")
    store.put(("users", "ana", "notes"), "n1", {"text": "x"})
    registry.close()  # the thread registry's database is gone: that part must fail, loudly
    with pytest.raises(UserDataError) as failed:
        data.export("ana")
    assert "part 'threads'" in str(failed.value) and "nothing was exported" in str(failed.value)
    with pytest.raises(UserDataError, match="failed in part 'threads'.*Run forget again") as err:
        data.forget("ana")
    assert set(err.value.failures) == {"threads"} and set(err.value.done) == {"memory", "store"}
    assert err.value.done["store"] == {"store_items": 1} and err.value.done["memory"]["episodes"] == 1
    assert memory.episodes("ana") == [] and store.search(("users", "ana")) == []


def test_a_bad_document_is_refused_before_anything_is_written(memory) -> None:
    data = UserData([MemoryPart(memory), ThreadsPart(ThreadRegistry(), InMemorySaver())])
    memory.remember("ana", "I live in Lisbon.")
    doc = data.export("ana")
    memory.forget("ana")
    with pytest.raises(InvalidDocument, match="not a pllm user export: format 'pllm.adapters'"):
        data.import_({**doc, "format": "pllm.adapters"})
    with pytest.raises(InvalidDocument, match="version 9"):
        data.import_({**doc, "version": 9})
    with pytest.raises(InvalidDocument, match="parts this stack does not hold: edits"):
        data.import_({**doc, "parts": {**doc["parts"], "edits": {}}})
    with pytest.raises(UserDataError, match="session 0 of the 'threads' part is not valid"):
        data.import_({**doc, "parts": {**doc["parts"], "threads": {"sessions": [{"session_id": "s1"}]}}})
    assert memory.episodes("ana") == []  # nothing of any attempt stayed
    assert data.import_(doc["parts"]["memory"]) == {"memory": 1}  # a memory-only export is still accepted


def test_chroma_store_namespaces_are_part_of_a_users_data(tmp_path: Path, embedder) -> None:
    store = ChromaStore(path=tmp_path / "store", embedder=embedder, collection=f"lc_{uuid.uuid4().hex[:8]}")
    part = StorePart(store)
    store.put(("users", "ana", "notes"), "n1", {"text": "waves at dawn"})
    store.put(("users", "ana", "prefs", "food"), "k", {"text": "no peanuts"})
    store.put(("users", "anabel", "notes"), "n1", {"text": "someone else"})
    exported = json.loads(json.dumps(part.export("ana")))
    assert part.import_(exported, user_id="bo") == 2
    assert store.get(("users", "bo", "prefs", "food"), "k").value == {"text": "no peanuts"}
    assert [r.key for r in store.search(("users", "bo"), query="peanut allergy", limit=1)] == ["k"]  # re-indexed
    assert part.forget("ana") == {"store_items": 2}
    assert store.search(("users", "ana")) == [] and store.get(("users", "anabel", "notes"), "n1") is not None
    assert part.export("ana") is None


def test_a_closed_stacks_threads_are_found_again_from_its_home(make_stack, tmp_path: Path, model_cache_dir: Path,
                                                              embedder) -> None:
    # What `pllm memory forget` does: no model, a fresh registry opened from the home.
    home = tmp_path / "home"
    stack = make_stack(home=home)
    stack.agent.chat("kim", "My name is Kim.", session_id="s1")
    stack.close()
    with open_user_data(Settings(home=home, model_cache=model_cache_dir), embedder=embedder) as data:
        assert [s["session_id"] for s in data.export("kim")["parts"]["threads"]["sessions"]] == ["s1"]
        removed = data.forget("kim")
    assert removed["threads"] == {"threads": 1} and removed["memory"]["episodes"] == 2
