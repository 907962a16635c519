"""ChromaStore against the behaviour of LangGraph's own InMemoryStore.

The shared tests run on three stores: ``InMemoryStore`` configured with our embedder (the reference),
``ChromaStore`` on an embedded client and ``ChromaStore`` on a ``chroma run`` server. Both ChromaStores
must behave like the reference. Cases follow the semantics in ``langgraph/store/memory/__init__.py`` and
``langgraph/store/base/__init__.py``: put/get/delete, namespace-prefix search, value filters, semantic
ranking with scores, index paths, pagination, list_namespaces, mixed batches, async twins.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from memory.chroma_backend import make_chroma_client, persistent_client
from memory.clock import ManualClock, utc
from memory.config import MemoryConfig
from memory.embeddings import LangChainEmbeddings
from memory.errors import InvalidInput
from memory.langgraph_store import ChromaStore
from tests.memory.chroma_server import chroma_server  # noqa: F401 - pytest fixture

BACKENDS = ["inmemory", "chroma-embedded", "chroma-server"]


@pytest.fixture(scope="module")
def chroma_clients(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One Chroma client per backend for the module (the server starts only if a test needs it)."""
    clients: dict[str, Any] = {}

    def get(kind: str) -> Any:
        if kind not in clients:
            home = tmp_path_factory.mktemp(kind)
            url = None
            if kind == "chroma-server":
                host, port = request.getfixturevalue("chroma_server")
                url = f"http://{host}:{port}"
            clients[kind] = make_chroma_client(MemoryConfig(home=home, chroma_url=url))
        return clients[kind]

    return {"get": get}


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, embedder, chroma_clients) -> BaseStore:
    if request.param == "inmemory":
        return InMemoryStore(index={"dims": embedder.dim, "embed": LangChainEmbeddings.create(embedder)})
    client = chroma_clients["get"](request.param)
    return ChromaStore(client, embedder=embedder, collection=f"lgstore_{uuid.uuid4().hex[:10]}")


def _keys(results: list) -> list[str]:
    return [r.key for r in results]


# ------------------------------------------------------------------------------ basic ops


def test_put_get_update_delete(store: BaseStore) -> None:
    ns = ("users", "u1")
    assert store.get(ns, "prefs") is None

    store.put(ns, "prefs", {"theme": "dark", "size": 12, "tags": ["a", "b"], "nested": {"x": 1}})
    item = store.get(ns, "prefs")
    assert item is not None
    assert (item.namespace, item.key) == (ns, "prefs")
    assert item.value == {"theme": "dark", "size": 12, "tags": ["a", "b"], "nested": {"x": 1}}
    assert item.created_at.tzinfo is not None and item.updated_at >= item.created_at

    store.put(ns, "prefs", {"theme": "light"})
    updated = store.get(ns, "prefs")
    assert updated is not None and updated.value == {"theme": "light"}
    assert updated.updated_at >= item.updated_at

    store.delete(ns, "prefs")
    assert store.get(ns, "prefs") is None
    assert store.get(("users", "u2"), "prefs") is None  # same key, other namespace: never there


def test_namespaces_are_separate(store: BaseStore) -> None:
    store.put(("a", "b"), "k", {"v": 1})
    store.put(("a",), "k", {"v": 2})
    assert store.get(("a", "b"), "k").value == {"v": 1}  # type: ignore[union-attr]
    assert store.get(("a",), "k").value == {"v": 2}  # type: ignore[union-attr]
    with pytest.raises(InvalidNamespaceError):
        store.put(("langgraph", "x"), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        store.put(("a.b",), "k", {"v": 1})


# --------------------------------------------------------------------------------- search


def test_search_by_namespace_prefix(store: BaseStore) -> None:
    store.put(("docs", "alice"), "d1", {"text": "one"})
    store.put(("docs", "alice", "drafts"), "d2", {"text": "two"})
    store.put(("docs", "bob"), "d3", {"text": "three"})
    store.put(("notes",), "n1", {"text": "four"})

    assert sorted(_keys(store.search(("docs",)))) == ["d1", "d2", "d3"]
    assert sorted(_keys(store.search(("docs", "alice")))) == ["d1", "d2"]
    assert sorted(_keys(store.search(()))) == ["d1", "d2", "d3", "n1"]
    assert store.search(("doc",)) == []  # a label prefix is not a namespace prefix
    assert all(r.score is None for r in store.search(("docs",)))


def test_search_filters_on_value_fields(store: BaseStore) -> None:
    ns = ("shop",)
    store.put(ns, "apple", {"color": "red", "price": 1.5, "stock": 10, "meta": {"origin": "NO"}, "sizes": [1, 2]})
    store.put(ns, "cherry", {"color": "red", "price": 6.0, "stock": 0, "meta": {"origin": "TR"}, "sizes": [1]})
    store.put(ns, "lime", {"color": "green", "price": 0.5, "stock": 3, "meta": {"origin": "MX"}, "sizes": [1, 2]})

    def keys(filter: dict[str, Any]) -> list[str]:
        return sorted(_keys(store.search(ns, filter=filter)))

    assert keys({"color": "red"}) == ["apple", "cherry"]
    assert keys({"color": {"$eq": "green"}}) == ["lime"]
    assert keys({"color": {"$ne": "red"}}) == ["lime"]
    assert keys({"price": {"$gt": 1.5}}) == ["cherry"]
    assert keys({"price": {"$gte": 1.5}}) == ["apple", "cherry"]
    assert keys({"price": {"$lt": 1.5}}) == ["lime"]
    assert keys({"price": {"$lte": 1.5}, "stock": {"$gt": 5}}) == ["apple"]
    assert keys({"color": "red", "stock": 0}) == ["cherry"]
    assert keys({"meta": {"origin": "MX"}}) == ["lime"]
    assert keys({"sizes": [1, 2]}) == ["apple", "lime"]
    assert keys({"color": "blue"}) == []


def test_query_ranks_by_meaning_with_scores(store: BaseStore) -> None:
    ns = ("memories", "u1")
    store.put(ns, "cats", {"text": "I like cats"})
    store.put(ns, "stocks", {"text": "stock market report"})
    store.put(ns, "weather", {"text": "heavy rain expected tomorrow"})

    results = store.search(ns, query="pets")

    assert results[0].key == "cats"
    scores = [r.score for r in results]
    assert all(s is not None and -1.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert store.search(ns, query="finance and shares", limit=1)[0].key == "stocks"


def test_query_combines_with_filter_and_pagination(store: BaseStore) -> None:
    ns = ("kb",)
    texts = {
        "k1": ("my cat sleeps all day", "home"),
        "k2": ("the dog barks at the mailman", "home"),
        "k3": ("interest rates rose again", "work"),
        "k4": ("a hamster runs in its wheel", "home"),
        "k5": ("quarterly earnings call", "work"),
    }
    for key, (text, area) in texts.items():
        store.put(ns, key, {"text": text, "area": area})

    home_pets = store.search(ns, query="pet animals", filter={"area": "home"}, limit=10)
    assert sorted(_keys(home_pets)) == ["k1", "k2", "k4"]

    pages = [store.search(ns, query="pet animals", limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    flat = [r for p in pages for r in p]
    assert sorted(_keys(flat)) == sorted(texts)  # disjoint pages that cover everything
    assert [r.score for r in flat] == sorted((r.score for r in flat), reverse=True)  # type: ignore[type-var]
    assert {r.key for r in pages[2]} <= {"k3", "k5"}  # the finance texts rank last for "pet animals"


def test_search_pagination_without_query(store: BaseStore) -> None:
    for i in range(7):
        store.put(("log",), f"e{i}", {"n": i})
    pages = [_keys(store.search(("log",), limit=3, offset=o)) for o in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(k for p in pages for k in p) == [f"e{i}" for i in range(7)]


def test_index_paths_choose_what_is_embedded(store: BaseStore) -> None:
    ns = ("recipes",)
    # Only the title is embedded: the body's words must not make "weather" match the pasta recipe.
    store.put(ns, "pasta", {"title": "creamy pasta carbonara", "body": "storm, rain, weather forecast"}, index=["title"])
    store.put(ns, "forecast", {"title": "weekend weather forecast", "body": "pasta"}, index=["title"])
    # Each tag is its own vector; an item's score is its best tag (max pooling).
    store.put(ns, "tagged", {"title": "misc", "tags": ["tax return", "kittens playing"]}, index=["tags[*]"])
    store.put(ns, "plain", {"title": "cute kitten photo"}, index=False)  # stored, not embedded

    assert store.search(ns, query="italian food recipe")[0].key == "pasta"
    assert store.search(ns, query="rain tomorrow")[0].key == "forecast"
    ranked = store.search(ns, query="baby cats", limit=10)
    assert ranked[0].key == "tagged"
    assert ranked[-1].key == "plain" and ranked[-1].score is None  # unindexed: after the scored, no score
    assert all(r.score is not None for r in ranked[:-1])
    assert store.get(ns, "plain").value == {"title": "cute kitten photo"}  # type: ignore[union-attr]


def test_update_re_embeds_the_new_value(store: BaseStore) -> None:
    ns = ("m",)
    store.put(ns, "a", {"text": "I like cats"})
    store.put(ns, "b", {"text": "stock market report"})
    assert store.search(ns, query="pets")[0].key == "a"

    store.put(ns, "a", {"text": "bond yields and inflation"})
    store.put(ns, "b", {"text": "my parrot talks"})
    assert store.search(ns, query="pets")[0].key == "b"

    store.delete(ns, "b")
    assert _keys(store.search(ns, query="pets")) == ["a"]


# ------------------------------------------------------------------------ list namespaces


def test_list_namespaces(store: BaseStore) -> None:
    for ns in [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
        ("users", "123"),
        ("users", "456", "settings"),
        ("admin", "users", "789"),
    ]:
        store.put(ns, "k", {"v": 1})

    assert store.list_namespaces(prefix=("a", "b")) == [
        ("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"),
    ]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(suffix=("*", "f")) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert store.list_namespaces(prefix=("users",)) == [("users", "123"), ("users", "456", "settings")]
    assert store.list_namespaces(max_depth=1) == [("a",), ("admin",), ("b",), ("users",)]
    everything = store.list_namespaces(limit=100)
    assert len(everything) == 9 and everything == sorted(everything)
    assert store.list_namespaces(limit=3, offset=3) == everything[3:6]
    assert store.list_namespaces(prefix=("nope",)) == []


# ---------------------------------------------------------------------------------- batch


def test_batch_with_mixed_ops_returns_results_in_order(store: BaseStore) -> None:
    store.put(("test", "foo"), "key1", {"data": "value1"})
    store.put(("test", "bar"), "key2", {"data": "value2"})

    results = store.batch(
        [
            GetOp(("test", "foo"), "key1"),
            PutOp(("test", "baz"), "key3", {"data": "value3"}),
            SearchOp(("test",), filter={"data": "value1"}),
            ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("test",)),), max_depth=2),
            GetOp(("test", "baz"), "key3"),  # written by this very batch: reads see the state before it
            PutOp(("test", "bar"), "key2", None),  # a None value deletes
            GetOp(("test", "missing"), "nope"),
        ]
    )

    assert len(results) == 7
    assert results[0].value == {"data": "value1"}  # type: ignore[union-attr]
    assert results[1] is None and results[5] is None
    assert _keys(results[2]) == ["key1"]  # type: ignore[arg-type]
    assert results[3] == [("test", "bar"), ("test", "foo")]
    assert results[4] is None and results[6] is None
    assert store.get(("test", "baz"), "key3").value == {"data": "value3"}  # type: ignore[union-attr]
    assert store.get(("test", "bar"), "key2") is None


def test_last_put_in_a_batch_wins(store: BaseStore) -> None:
    store.batch([PutOp(("x",), "k", {"v": 1}), PutOp(("x",), "k", {"v": 2}), PutOp(("y",), "k", {"v": 3})])
    assert store.get(("x",), "k").value == {"v": 2}  # type: ignore[union-attr]
    store.batch([PutOp(("x",), "k", {"v": 4}), PutOp(("x",), "k", None)])
    assert store.get(("x",), "k") is None


def test_async_twins(store: BaseStore) -> None:
    async def scenario() -> None:
        ns = ("async", "u1")
        await store.aput(ns, "cats", {"text": "I like cats"})
        await store.aput(ns, "stocks", {"text": "stock market report"})
        got = await store.aget(ns, "cats")
        assert got is not None and got.value == {"text": "I like cats"}
        assert (await store.asearch(ns, query="pets"))[0].key == "cats"
        assert await store.alist_namespaces(prefix=("async",)) == [ns]
        gathered = await asyncio.gather(store.aget(ns, "stocks"), store.asearch(("async",), filter={"text": "I like cats"}))
        assert gathered[0].value == {"text": "stock market report"}  # type: ignore[union-attr]
        assert _keys(gathered[1]) == ["cats"]
        await store.adelete(ns, "cats")
        assert await store.aget(ns, "cats") is None

    asyncio.run(scenario())


# -------------------------------------------------------------------- ChromaStore specifics


def test_chroma_store_persists_and_keeps_created_at(tmp_path: Path, embedder) -> None:
    clock = ManualClock(utc(2024, 1, 1))
    first = ChromaStore(path=tmp_path / "db", embedder=embedder, clock=clock)
    first.put(("u",), "profile", {"name": "Ada"})
    clock.advance(timedelta(days=2))
    first.put(("u",), "profile", {"name": "Ada", "city": "Oslo"})

    # A second store object on a fresh client over the same folder sees everything.
    reopened = ChromaStore(persistent_client(tmp_path / "db"), embedder=embedder)
    item = reopened.get(("u",), "profile")
    assert item is not None and item.value == {"name": "Ada", "city": "Oslo"}
    assert item.created_at == utc(2024, 1, 1) and item.updated_at == utc(2024, 1, 3)
    assert reopened.search(("u",), query="where does Ada live")[0].key == "profile"


def test_chroma_store_refuses_bad_input(tmp_path: Path, embedder) -> None:
    store = ChromaStore(path=tmp_path / "db", embedder=embedder)
    with pytest.raises(InvalidInput, match="exactly one"):
        ChromaStore(embedder=embedder)
    with pytest.raises(NotImplementedError, match="TTL"):
        store.put(("u",), "k", {"v": 1}, ttl=5.0)
    with pytest.raises(InvalidInput, match="JSON"):
        store.batch([PutOp(("u",), "ok", {"v": 1}), PutOp(("u",), "k", {"v": object()})])
    with pytest.raises(InvalidNamespaceError):  # batch() validates what put() would, so "a.b" ≠ ("a", "b")
        store.batch([PutOp(("a.b",), "k", {"v": 1})])
    assert store.search(()) == []  # the failed batches wrote nothing, not even their valid puts

    store.put(("u",), "k", {"v": 1})
    with pytest.raises(InvalidInput, match="operator"):
        store.search(("u",), filter={"v": {"$regex": "x"}})


# ------------------------------------------------------------------------- LangGraph graph


def test_a_compiled_graph_reads_and_writes_through_the_store(tmp_path: Path, embedder) -> None:
    from dataclasses import dataclass
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import Runtime

    @dataclass(frozen=True)
    class Context:
        user_id: str

    class State(TypedDict, total=False):
        message: str
        recalled: list[str]

    def remember(state: State, runtime: Runtime[Context]) -> State:
        assert runtime.store is not None
        runtime.store.put(("memories", runtime.context.user_id), uuid.uuid4().hex, {"text": state["message"]})
        return {}

    def recall(state: State, *, store: BaseStore, runtime: Runtime[Context]) -> State:
        hits = store.search(("memories", runtime.context.user_id), query="pets", limit=1)
        return {"recalled": [h.value["text"] for h in hits]}

    builder = StateGraph(State, context_schema=Context)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    store = ChromaStore(path=tmp_path / "graph-db", embedder=embedder)
    graph = builder.compile(store=store)

    graph.invoke({"message": "the quarterly report is due"}, context=Context("u1"))
    out = graph.invoke({"message": "my cat Tom loves tuna"}, context=Context("u1"))
    other = graph.invoke({"message": "I trade stocks"}, context=Context("u2"))

    assert out["recalled"] == ["my cat Tom loves tuna"]
    assert other["recalled"] == ["I trade stocks"]  # u2 sees only u2's namespace
    assert len(store.search(("memories", "u1"))) == 2
    assert store.list_namespaces(prefix=("memories",)) == [("memories", "u1"), ("memories", "u2")]


def test_a_collection_name_ending_in_a_newline_is_refused(tmp_path: Path, embedder) -> None:
    with pytest.raises(InvalidInput, match="not a valid Chroma collection name"):
        ChromaStore(path=tmp_path / "db", embedder=embedder, collection="pllm_store\n")


# ------------------------------------------------------------------ per-user data (the registry's hooks)


def _user_items(store: ChromaStore) -> None:
    store.put(("users", "ann", "prefs"), "drink", {"text": "Ann drinks green tea every morning"})
    store.put(("users", "ann", "notes"), "pet", {"text": "the dog", "tags": ["dog Rex", "pet"]}, index=["tags[*]"])
    store.put(("users", "ann", "notes"), "raw", {"n": 1}, index=False)
    store.put(("users", "annabel"), "drink", {"text": "Annabel drinks cocoa"})
    store.put(("users", "bob"), "drink", {"text": "Bob drinks black coffee"})


def test_a_users_namespace_is_exported_moved_and_forgotten_with_its_vectors(tmp_path: Path, embedder) -> None:
    import json

    clock = ManualClock(utc(2024, 1, 1))
    store = ChromaStore(path=tmp_path / "db", embedder=embedder, clock=clock)
    _user_items(store)
    clock.advance(timedelta(days=1))
    store.put(("users", "ann", "prefs"), "drink", {"text": "Ann drinks green tea every morning", "cups": 2})
    exported = json.loads(json.dumps(store.export_namespace(("users", "ann"))))  # JSON-ready
    assert [(e["namespace"], e["key"], len(e["texts"])) for e in exported] == [
        (["users", "ann", "notes"], "pet", 2), (["users", "ann", "notes"], "raw", 0), (["users", "ann", "prefs"], "drink", 1)]
    assert exported[0]["texts"] == ["dog Rex", "pet"] and "green tea" in exported[2]["texts"][0]

    clock.advance(timedelta(days=30))
    assert store.import_namespace(exported, prefix=("users", "bea")) == 3  # Ann's items, now Bea's
    ann, bea = store.get(("users", "ann", "prefs"), "drink"), store.get(("users", "bea", "prefs"), "drink")
    assert bea is not None and ann is not None
    assert (bea.value, bea.created_at, bea.updated_at) == (ann.value, utc(2024, 1, 1), utc(2024, 1, 2))
    found = store.search(("users", "bea"), query="what does she drink in the morning?")
    assert found[0].key == "drink" and found[0].score == pytest.approx(
        store.search(("users", "ann"), query="what does she drink in the morning?")[0].score, abs=1e-5)
    assert store.search(("users", "bea", "notes"), query="a puppy called Rex")[0].key == "pet"  # its tags, re-embedded

    vectors = store._vectors.count()
    assert store.forget_namespace(("users", "ann")) == 3
    assert store._vectors.count() == vectors - 3  # the item's vectors went with it (1 + 2 + 0)
    assert store.search(("users", "ann")) == [] and store.get(("users", "ann", "prefs"), "drink") is None
    assert store.forget_namespace(("users", "ann")) == 0
    assert [i.key for i in store.search(("users", "annabel"))] == ["drink"]  # a longer label is another user
    assert store.search(("users", "bob"), query="coffee")[0].value["text"] == "Bob drinks black coffee"
    assert len(store.search(("users", "bea"))) == 3


BAD_ITEMS = {
    "not a mapping": ("oops", "must be a mapping"),
    "no namespace": ({"key": "k", "value": {}}, "namespace must be"),
    "dotted label": ({"namespace": ["users", "x", "a.b"], "key": "k", "value": {}}, "not a valid namespace"),
    "value not a dict": ({"namespace": ["users", "x"], "key": "k", "value": [1]}, "value must be a mapping"),
    "not JSON": ({"namespace": ["users", "x"], "key": "k", "value": {"v": object()}}, "JSON"),
    "bad time": ({"namespace": ["users", "x"], "key": "k", "value": {}, "created_at": "soon"}, "ISO-8601"),
    "bad texts": ({"namespace": ["users", "x"], "key": "k", "value": {}, "texts": "one"}, "texts must be"),
    "lone surrogate": ({"namespace": ["users", "x"], "key": "k", "value": {"t": "caf\udce9"}}, "not valid Unicode"),
    "too short for the prefix": ({"namespace": ["users"], "key": "k", "value": {}}, "shorter than the new prefix"),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_a_bad_import_names_the_item_and_writes_nothing(tmp_path: Path, embedder, case: str) -> None:
    store = ChromaStore(path=tmp_path / "db", embedder=embedder)
    _user_items(store)
    good = store.export_namespace(("users", "ann"))
    bad, message = BAD_ITEMS[case]
    with pytest.raises(InvalidInput, match=message) as refused:
        store.import_namespace([*good, bad], prefix=("users", "cid"))  # the bad one is the last
    assert "item #3" in str(refused.value)
    assert store.search(("users", "cid")) == [] and store.export_namespace(("users", "ann")) == good


def test_namespace_hooks_refuse_an_empty_prefix_and_duplicates(tmp_path: Path, embedder) -> None:
    store = ChromaStore(path=tmp_path / "db", embedder=embedder)
    _user_items(store)
    for call in (lambda: store.forget_namespace(()), lambda: store.export_namespace(()), lambda: store.forget_namespace("users")):
        with pytest.raises(InvalidInput, match="non-empty tuple"):
            call()
    items = store.export_namespace(("users", "bob"))
    with pytest.raises(InvalidInput, match="both hold"):
        store.import_namespace(items + items)
    assert len(store.search(("users",), limit=50)) == 5  # nothing was deleted or written
