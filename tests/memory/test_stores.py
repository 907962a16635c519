"""Episodic and semantic stores against real Chroma: embedded (PersistentClient) and a `chroma run` server.

Every test that takes ``stores``/``config`` runs once per backend.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.chroma_backend import collection_name, make_chroma_client, open_collection
from memory.clock import utc
from memory.config import MemoryConfig
from memory.errors import InvalidInput, StoreError
from memory.records import Episode
from memory.stores import EpisodicStore, MemoryItem, SemanticStore
from tests.memory.chroma_server import chroma_server  # noqa: F401 - pytest fixture

REPO = Path(__file__).resolve().parents[2]
T0 = utc(2024, 3, 1, 9, 30)


@pytest.fixture(scope="module", params=["embedded", "server"])
def config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MemoryConfig:
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    if request.param == "embedded":
        return MemoryConfig(home=home)
    host, port = request.getfixturevalue("chroma_server")
    return MemoryConfig(home=home, chroma_url=f"http://{host}:{port}")


@pytest.fixture(scope="module")
def client(config: MemoryConfig):
    return make_chroma_client(config)


def _fresh_stores(config: MemoryConfig, client, embedder) -> tuple[EpisodicStore, SemanticStore]:
    tag = uuid.uuid4().hex[:8]
    episodic = EpisodicStore(client, embedder, name=collection_name(config, f"episodes_{tag}"))
    semantic = SemanticStore(client, embedder, name=collection_name(config, f"semantic_{tag}"))
    return episodic, semantic


@pytest.fixture()
def stores(config: MemoryConfig, client, embedder) -> tuple[EpisodicStore, SemanticStore]:
    return _fresh_stores(config, client, embedder)


@pytest.fixture(scope="module")
def shared_stores(config: MemoryConfig, client, embedder) -> tuple[EpisodicStore, SemanticStore]:
    return _fresh_stores(config, client, embedder)


def ep(
    user: str, text: str, at: datetime, *, session: str = "s1", importance: float = 0.5, id: str | None = None
) -> Episode:
    extra = {"id": id} if id else {}
    return Episode(
        user_id=user, session_id=session, role="user", text=text, at=at,
        recorded_at=at + timedelta(seconds=1), importance=importance, **extra,
    )


# ------------------------------------------------------------------------------------ episodes


def test_episodes_round_trip_exactly(stores, embedder) -> None:
    episodic, _ = stores
    berlin = timezone(timedelta(hours=2))
    episodes = [
        ep("alice", "I moved to Oslo last spring", T0 + timedelta(microseconds=123_457), importance=0.9),
        ep("alice", "My sister is called Ingrid", datetime(2023, 12, 31, 23, 59, 59, 999_999, tzinfo=berlin), session="s0"),
        ep("alice", "Remind me in four centuries", datetime(2424, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)),
    ]
    episodic.add(episodes)

    got = episodic.get("alice")
    assert got == sorted(episodes, key=lambda e: e.at)
    assert all(e.at.tzinfo is not None and e.at.utcoffset() == timedelta(0) for e in got)
    assert episodic.get("alice", limit=2) == sorted(episodes, key=lambda e: e.at)[-2:]
    assert episodic.get("alice", [episodes[1].id, "no-such-id"]) == [episodes[1]]


def test_add_is_idempotent_and_keeps_recall_statistics(stores) -> None:
    episodic, _ = stores
    first = ep("bob", "I like jazz", T0)
    episodic.add([first])
    meta = episodic.metadata("bob", [first.id])[first.id]
    assert meta["recall_count"] == 0 and meta["last_recalled"] == pytest.approx(T0.timestamp())
    episodic.update_metadata("bob", {first.id: {"recall_count": 3, "last_recalled": T0.timestamp() + 60}})

    episodic.add([first])  # the same episode again, e.g. a retried turn

    assert episodic.count("bob") == 1
    meta = episodic.metadata("bob", [first.id])[first.id]
    assert meta["recall_count"] == 3 and meta["last_recalled"] == pytest.approx(T0.timestamp() + 60)


def test_query_ranks_by_meaning_and_caps_k(stores, embedder) -> None:
    episodic, _ = stores
    texts = ["I adopted a kitten and a puppy", "The quarterly stock market report was grim", "I bake sourdough bread"]
    episodic.add([ep("carol", t, T0 + timedelta(hours=i)) for i, t in enumerate(texts)])
    episodic.add([ep("dave", "My dog and cat are my best friends", T0)])

    hits = episodic.query("carol", embedder.embed(["pets"])[0], k=50)

    assert [h.text for h in hits][0] == texts[0]
    assert len(hits) == 3  # k capped to carol's episodes; dave's pet sentence never appears
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True) and all(-1.0 <= s <= 1.0 for s in sims)
    assert {h.metadata["user_id"] for h in hits} == {"carol"}
    assert episodic.query("nobody", embedder.embed(["pets"])[0], k=5) == []


def test_where_filters_on_event_time(stores, embedder) -> None:
    episodic, _ = stores
    days = [ep("erin", f"diary entry number {i}", T0 + timedelta(days=i)) for i in range(5)]
    episodic.add(days)
    query = embedder.embed(["diary"])[0]

    since_day_2 = episodic.query("erin", query, 10, where={"at": {"$gte": T0 + timedelta(days=2)}})
    between = episodic.query(
        "erin",
        query,
        10,
        where={"$and": [
            {"at": {"$gte": (T0 + timedelta(days=1)).timestamp()}},  # plain epoch seconds work too
            {"at": {"$lte": (T0 + timedelta(days=3)).timestamp()}},
        ]},
    )

    assert {h.id for h in since_day_2} == {e.id for e in days[2:]}
    assert {h.id for h in between} == {e.id for e in days[1:4]}


def test_update_metadata_merges_and_is_all_or_nothing(stores) -> None:
    episodic, _ = stores
    mine, other = ep("fay", "I run marathons", T0), ep("gus", "I collect stamps", T0)
    episodic.add([mine, other])

    episodic.update_metadata("fay", {mine.id: {"recall_count": 2, "importance": 0.8}})
    meta = episodic.metadata("fay", [mine.id])[mine.id]
    assert (meta["recall_count"], meta["importance"], meta["session_id"]) == (2, 0.8, "s1")

    with pytest.raises(InvalidInput, match="nothing was updated"):  # gus's id is not fay's
        episodic.update_metadata("fay", {mine.id: {"recall_count": 9}, other.id: {"recall_count": 9}})
    with pytest.raises(InvalidInput, match="cannot be updated"):
        episodic.update_metadata("fay", {mine.id: {"user_id": "gus"}})
    with pytest.raises(InvalidInput, match="within"):
        episodic.update_metadata("fay", {mine.id: {"importance": 3.0}})
    assert episodic.metadata("fay", [mine.id])[mine.id]["recall_count"] == 2
    assert episodic.metadata("gus", [other.id])[other.id]["recall_count"] == 0


def test_delete_user_leaves_nothing_of_that_user(stores, embedder) -> None:
    episodic, semantic = stores
    episodic.add([ep("hal", f"hal says {i}", T0 + timedelta(minutes=i)) for i in range(4)] + [ep("ivy", "ivy says hi", T0)])
    semantic.add([MemoryItem(id="m-hal", user_id="hal", kind="fact", text="hal lives in Rome", at=T0)])

    assert episodic.delete_user("hal") == 4
    assert semantic.delete_user("hal") == 1

    assert episodic.count("hal") == 0 and episodic.get("hal") == [] and semantic.get("hal") == []
    assert episodic.query("hal", embedder.embed(["hal says"])[0], 10) == []
    assert [e.text for e in episodic.get("ivy")] == ["ivy says hi"]


def test_delete_and_add_never_touch_another_users_records(stores) -> None:
    episodic, _ = stores
    theirs = ep("jan", "jan's secret", T0, id="ep_shared_id")
    episodic.add([theirs])

    episodic.delete("kim", [theirs.id])
    with pytest.raises(InvalidInput, match="another user"):
        episodic.add([ep("kim", "kim overwrites", T0, id="ep_shared_id")])

    assert episodic.get("jan") == [theirs]
    assert episodic.get("kim", [theirs.id]) == []


WORDS = ["coffee", "tea", "Oslo", "Paris", "cat", "dog", "guitar", "chess", "running", "sushi", "rain", "exam"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.lists(st.sampled_from(WORDS), min_size=1, max_size=4)),
        min_size=1,
        max_size=8,
    ),
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
)
def test_queries_for_one_user_never_return_another_users_records(shared_stores, embedder, docs, query) -> None:
    episodic, _ = shared_stores
    run = uuid.uuid4().hex[:8]  # each example gets its own users in the shared collection
    episodes = [ep(f"{run}-{u}", " ".join(words), T0 + timedelta(seconds=i)) for i, (u, words) in enumerate(docs)]
    episodic.add(episodes)
    vector = embedder.embed([" ".join(query)])[0]

    for user in ("a", "b", "c"):
        user_id = f"{run}-{user}"
        own = {e.id for e in episodes if e.user_id == user_id}
        hits = episodic.query(user_id, vector, k=len(episodes))
        assert {h.id for h in hits} == own
        assert {e.id for e in episodic.get(user_id)} == own
        assert episodic.count(user_id) == len(own)


# ------------------------------------------------------------------------------------ semantic


def _items(user: str) -> list[MemoryItem]:
    return [
        MemoryItem(
            id=f"{user}-m1", user_id=user, kind="fact", text="lives in Berlin", at=T0,
            source_episode_ids=("e1",), fact_id=f"{user}-f1",
        ),
        MemoryItem(
            id=f"{user}-m2", user_id=user, kind="fact", text="lives in Lisbon", at=T0 + timedelta(days=30),
            source_episode_ids=("e7", "e8"), fact_id=f"{user}-f2",
        ),
        MemoryItem(id=f"{user}-m3", user_id=user, kind="preference", text="likes green tea", at=T0, fact_id=f"{user}-f3"),
        MemoryItem(id=f"{user}-m4", user_id=user, kind="summary", text="talked about moving cities", at=T0 + timedelta(days=31)),
    ]


def test_semantic_items_round_trip(stores) -> None:
    _, semantic = stores
    items = _items("lea")
    semantic.add(items)
    assert semantic.get("lea") == sorted(items, key=lambda i: (i.at, i.id))
    assert semantic.count("lea") == 4 and semantic.ids("lea") == sorted(i.id for i in items)


def test_superseded_facts_are_hidden_unless_asked_for(stores, embedder) -> None:
    _, semantic = stores
    semantic.add(_items("max") + _items("ned"))
    where_do_i_live = embedder.embed(["which city do I live in"])[0]

    semantic.mark_superseded("max", ["max-f1", "ned-f1"])  # ned's fact id is not max's: ignored

    current = semantic.query("max", where_do_i_live, 10, kinds=["fact"])
    everything = semantic.query("max", where_do_i_live, 10, kinds=["fact"], include_superseded=True)
    assert [h.text for h in current] == ["lives in Lisbon"]
    assert {h.text for h in everything} == {"lives in Berlin", "lives in Lisbon"}
    assert everything[0].metadata["source_episode_ids"] in (("e1",), ("e7", "e8"))
    assert [i.current for i in semantic.get("max")] == [False, True, True, True]
    assert all(i.current for i in semantic.get("ned"))
    not_facts = semantic.query("max", where_do_i_live, 10, kinds=["summary", "preference"])
    assert {h.metadata["kind"] for h in not_facts} == {"summary", "preference"}

    semantic.mark_current("max", ["max-f1"])  # e.g. a rolled-back turn restores the old fact
    assert len(semantic.query("max", where_do_i_live, 10, kinds=["fact"])) == 2


# --------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_error(stores, embedder) -> None:
    episodic, semantic = stores
    good = ep("oli", "hello", T0)
    with pytest.raises(InvalidInput, match="shape"):
        episodic.add([good], vectors=np.zeros((2, embedder.dim)))
    with pytest.raises(InvalidInput, match="Episode"):
        episodic.add(["just a string"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="twice"):
        episodic.add([good, good])
    with pytest.raises(InvalidInput, match="k must be"):
        episodic.query("oli", embedder.embed(["x"])[0], 0)
    with pytest.raises(InvalidInput, match="query vector"):
        episodic.query("oli", np.zeros(3), 1)
    with pytest.raises(InvalidInput, match="user_id"):
        episodic.count("")
    with pytest.raises(InvalidInput, match="kinds"):
        semantic.query("oli", embedder.embed(["x"])[0], 1, kinds=["opinion"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="kind"):
        MemoryItem(id="x", user_id="oli", kind="opinion", text="t", at=T0)  # type: ignore[arg-type]
    assert episodic.count("oli") == 0  # nothing half-written


def test_precomputed_vectors_are_used_as_given(stores, embedder) -> None:
    episodic, _ = stores
    episodes = [ep("pia", "alpha", T0), ep("pia", "beta", T0 + timedelta(seconds=1))]
    vectors = np.eye(2, embedder.dim, dtype=np.float32)  # (2, 384) unit rows, unrelated to the texts
    episodic.add(episodes, vectors=vectors)

    hits = episodic.query("pia", vectors[1], k=1)
    assert hits[0].id == episodes[1].id and hits[0].similarity == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------- persistence/reopen

CHILD = textwrap.dedent(
    """
    import json, sys
    from datetime import timedelta
    from memory.chroma_backend import make_chroma_client
    from memory.clock import utc
    from memory.config import MemoryConfig
    from memory.embeddings import MiniLMEmbedder
    from memory.records import Episode
    from memory.stores import EpisodicStore
    args = json.loads(sys.argv[1])
    config = MemoryConfig(home=args["home"], chroma_url=args["url"])
    # The parent embedded the texts: with vectors given, the child never loads the model (fast start).
    store = EpisodicStore(make_chroma_client(config), MiniLMEmbedder(), name=args["name"])
    t = utc(2024, 5, 1)
    store.add([Episode(user_id="zoe", session_id="s", role="user", text=text, at=t + timedelta(minutes=i),
                       recorded_at=t, id=f"zoe-{i}") for i, text in enumerate(args["texts"])],
              vectors=args["vectors"])
    assert "sentence_transformers" not in sys.modules
    """
)


def test_a_store_written_by_another_process_reopens_and_queries(config: MemoryConfig, embedder, tmp_path: Path) -> None:
    # A fresh home for the embedded backend: this process has never opened a client on it.
    home = tmp_path / "home" if config.chroma_url is None else config.home
    name = collection_name(config, f"reopen_{uuid.uuid4().hex[:8]}")
    texts = ["I play the cello on Sundays", "My flight to Tokyo leaves Friday"]
    vectors = embedder.embed(texts).tolist()
    args = json.dumps({"home": str(home), "url": config.chroma_url, "name": name, "texts": texts, "vectors": vectors})
    child = subprocess.run([sys.executable, "-c", CHILD, args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]

    reopened_config = MemoryConfig(home=home, chroma_url=config.chroma_url)
    fresh_client = make_chroma_client(reopened_config)
    store = EpisodicStore(fresh_client, embedder, name=name)
    hits = store.query("zoe", embedder.embed(["musical instrument"])[0], k=2)
    assert [e.text for e in store.get("zoe")] == texts
    assert hits[0].text == texts[0]
    # Even a plain get_collection (no function passed) embeds query texts with ours, rebuilt by name
    # from the persisted configuration — never with Chroma's downloading default.
    plain = fresh_client.get_collection(store.collection_name("zoe"))
    assert plain.configuration["embedding_function"].name() == "pllm-minilm"
    assert plain.query(query_texts=["musical instrument"], n_results=1)["documents"][0] == [texts[0]]


# ---------------------------------------------------------------------------------- backend


def test_backend_refuses_what_it_cannot_serve(tmp_path: Path, embedder) -> None:
    import chromadb
    from chromadb.config import Settings

    with pytest.raises(StoreError, match="chroma run"):
        make_chroma_client(MemoryConfig(home=tmp_path, chroma_url="http://127.0.0.1:9"))
    with pytest.raises(InvalidInput, match="collection name"):
        collection_name(MemoryConfig(home=tmp_path), "bad name!")
    with pytest.raises(InvalidInput, match="IPv4"):
        open_collection(make_chroma_client(MemoryConfig(home=tmp_path)), "192.168.0.1", embedder)

    # A collection someone made in L2 space would make our similarities wrong: refused, not used.
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False))
    from memory.embeddings import ChromaEmbeddingFunction

    client.create_collection(
        "pllm_l2space", embedding_function=ChromaEmbeddingFunction(embedder), configuration={"hnsw": {"space": "l2"}}  # type: ignore[arg-type]
    )
    with pytest.raises(StoreError, match="cosine"):
        open_collection(client, "pllm_l2space", embedder)
