"""Hybrid retrieval against the real stack: embedded Chroma, the real MiniLM embedder, the SQLite-backed graph.

What a user would notice: the right turn comes back whether the question shares its words, its meaning,
its conversational context or an entity in the graph; a stated preference comes back for a question that
depends on it among unrelated chatter; old sessions come back as their summaries; outdated facts stay
hidden; nobody sees anybody else's memories; memories fade with time and fade slower once recalled.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest

from memory.bm25 import BM25Index, content_words
from memory.chroma_backend import collection_name, make_chroma_client
from memory.clock import ManualClock, utc
from memory.config import MemoryConfig
from memory.errors import InvalidInput
from memory.extraction.base import Candidate
from memory.graph import KnowledgeGraph
from memory.records import Episode, FactAdded, FactSuperseded
from memory.retrieval import HybridRetriever, RetrievalWeights, rrf, zscore_fusion
from memory.stores import EpisodicStore, MemoryItem, SemanticStore

T0 = utc(2024, 5, 1, 9, 0)

# ------------------------------------------------------------------------------------------- BM25Index

CORPUS = [
    "Caroline went to a support group yesterday",
    "Melanie painted a sunrise by the lake",
    "I love running and painting on weekends",
    "The dog walked past the wall with a mural",
    "We booked flights to Lisbon for the conference",
    "My sister adopted a grey cat named Pixel",
]


def test_incremental_adds_rank_exactly_like_a_full_build() -> None:
    built, grown = BM25Index(), BM25Index()
    ids = [f"d{i}" for i in range(len(CORPUS))]
    built.load_user("u", ids, CORPUS)
    for doc_id, text in zip(ids, CORPUS):  # one turn at a time, all in the tail
        grown.add("u", [doc_id], [text])
    for query in ("painting lake sunrise", "cat sister", "Lisbon flights", "support group"):
        a, b = built.search("u", query, 5), grown.search("u", query, 5)
        assert [i for i, _ in a] == [i for i, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], rel=1e-5)


def test_index_stays_correct_across_lazy_rebuilds_and_removals() -> None:
    rng = random.Random(0)
    words = "apple banana cherry grape lemon mango olive peach plum river stone cloud".split()
    index = BM25Index()
    docs = {f"d{i}": " ".join(rng.choices(words, k=6)) for i in range(700)}
    for doc_id, text in docs.items():  # crosses the 256-document tail limit twice
        index.add("u", [doc_id], [text])
    index.add("u", ["needle"], ["a unique zeppelin sentence"])
    index.remove("u", ["d3", "d10"])
    assert index.count("u") == 699
    assert index.search("u", "zeppelin", 3)[0][0] == "needle"
    hits = index.search("u", docs["d3"], 700)
    assert "d3" not in {i for i, _ in hits} and "d10" not in {i for i, _ in hits}
    reference = BM25Index()
    live = {i: t for i, t in docs.items() if i not in ("d3", "d10")} | {"needle": "a unique zeppelin sentence"}
    reference.load_user("u", list(live), list(live.values()))
    assert {i for i, _ in index.search("u", "mango peach", 20)} == {i for i, _ in reference.search("u", "mango peach", 20)}


def test_stemming_stopwords_and_unknown_users() -> None:
    index = BM25Index()
    index.load_user("u", ["a", "b"], ["She painted the fence", "They went swimming"])
    assert index.search("u", "painting", 2)[0][0] == "a"  # painted ~ painting
    assert index.search("u", "the and of", 2) == []  # only stop words
    assert index.search("nobody", "painting", 2) == []
    index.drop_user("u")
    assert index.search("u", "painting", 2) == [] and not index.has_user("u")
    with pytest.raises(InvalidInput):
        index.add("u", ["x"], [])


def test_min_share_drops_hits_that_match_only_a_common_word() -> None:
    index = BM25Index()
    texts = ["the weather report for today"] * 5 + ["we recommend the weather app", "Porto tram schedule and weather"]
    index.load_user("u", [f"d{i}" for i in range(7)], texts)
    query = "recommend a Porto tram pass"
    assert {i for i, _ in index.search("u", query, 7)} >= {"d5", "d6"}
    strict = index.search("u", query, 7, min_share=0.1)
    assert [i for i, _ in strict] == ["d6"]  # two rare query words vs one


def test_concurrent_adds_lose_nothing() -> None:
    index = BM25Index()

    def writer(t: int) -> None:
        for i in range(150):
            index.add("u", [f"t{t}-{i}"], [f"thread{t} message number {i} about topic{i % 7}"])
            index.search("u", f"topic{i % 7}", 3)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert index.count("u") == 600
    assert {i for i, _ in index.search("u", "thread2", 1000)} == {f"t2-{i}" for i in range(150)}


# ------------------------------------------------------------------------------------------------- RRF


def test_rrf_rewards_agreement_and_honours_weights() -> None:
    fused = rrf([["a", "b", "c"], ["b", "a", "d"]], k=60)
    assert max(fused, key=fused.get) in ("a", "b") and fused["a"] == pytest.approx(fused["b"])
    assert fused["a"] > fused["c"] > 0 and fused["a"] > fused["d"]
    weighted = rrf([["a", "b"], ["b", "a"]], k=1, weights=[3.0, 1.0])
    assert weighted["a"] > weighted["b"]
    assert rrf([["a", "a", "b"]], k=1)["a"] == pytest.approx(1 / 2)  # a repeat counts once
    with pytest.raises(InvalidInput):
        rrf([["a"]], weights=[1.0, 2.0])
    with pytest.raises(InvalidInput):
        rrf([["a"]], k=0)


# -------------------------------------------------------------------------------------- HybridRetriever


@dataclass
class World:
    config: MemoryConfig
    episodic: EpisodicStore
    semantic: SemanticStore
    graph: KnowledgeGraph
    clock: ManualClock
    embedder: object
    retriever: HybridRetriever

    def fresh_retriever(self, **weights: float) -> HybridRetriever:
        """A retriever as a new process would build it: empty lexical index over the same stores."""
        return HybridRetriever(
            self.episodic, self.semantic, self.graph, self.embedder, BM25Index(), self.clock, self.config,  # type: ignore[arg-type]
            weights=RetrievalWeights(**weights),
        )

    def say(self, user: str, text: str, *, session: str = "s1", at_minutes: int = 0,
            claims: tuple[Candidate, ...] = (), role: str = "user") -> Episode:
        """What the facade does per turn: store the episode, index it, apply claims, mirror facts."""
        episode = Episode(user, session, role, text, T0 + timedelta(minutes=at_minutes), self.clock.now())  # type: ignore[arg-type]
        self.episodic.add([episode])
        self.retriever.index([episode])
        events = self.graph.apply(user, list(claims), episode_id=episode.id, at=episode.at)
        for event in events:
            if isinstance(event, FactSuperseded):
                self.semantic.mark_superseded(user, [event.old.id])
            fact = event.fact if isinstance(event, FactAdded) else event.new if isinstance(event, FactSuperseded) else None
            if fact is not None:
                item = MemoryItem(f"item-{fact.id}", user, fact.kind, fact.text(), fact.valid_from,
                                  fact.source_episode_ids, fact.id)
                self.semantic.add([item])
        return episode


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, embedder) -> World:  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("retrieval")
    config = MemoryConfig(home=home)
    client = make_chroma_client(config)
    tag = uuid.uuid4().hex[:8]
    episodic = EpisodicStore(client, embedder, name=collection_name(config, f"ep_{tag}"))
    semantic = SemanticStore(client, embedder, name=collection_name(config, f"sem_{tag}"))
    clock = ManualClock(T0)
    graph = KnowledgeGraph(home / "graph.sqlite", clock)
    retriever = HybridRetriever(episodic, semantic, graph, embedder, BM25Index(), clock, config)
    w = World(config, episodic, semantic, graph, clock, embedder, retriever)
    fillers = [
        "I watched a documentary about volcanoes last night.",
        "The weather has been rainy all week.",
        "I need to buy new running shoes soon.",
        "My laptop battery died during the meeting.",
        "We tried a new pizza place downtown, it was fine.",
        "I have been reading a novel about sailors.",
    ]
    for i, text in enumerate(fillers):
        w.say("alice", text, session="s0", at_minutes=i)
    return w


def test_content_words_leave_out_question_and_pronoun_words_and_match_word_forms() -> None:
    assert content_words("What is my job?") == {"job"}
    assert content_words("What did you say about my jobs?") == {"say", "job"}  # stemmed: "jobs" is "job"
    assert not content_words("What is my job?") & content_words("What do you think of my plan?")
    assert content_words("Is it?") == set()


def test_lexical_and_semantic_matches_both_come_back(world: World) -> None:
    code = world.say("alice", "My train ticket reference is QX7731 for the Porto trip.", session="s1", at_minutes=100)
    pet = world.say("alice", "We adopted a golden retriever puppy last week!", session="s1", at_minutes=101)
    lexical = world.retriever.retrieve("alice", "QX7731", k_episodes=3, k_facts=0)
    assert lexical.episodes[0].episode_id == code.id and "bm25" in lexical.episodes[0].sources
    semantic = world.retriever.retrieve("alice", "Does she own a dog?", k_episodes=3, k_facts=0)
    assert pet.id in semantic.episode_ids[:2]
    assert "dense" in next(e for e in semantic.episodes if e.episode_id == pet.id).sources


def test_a_reply_is_found_through_the_question_it_answers(world: World) -> None:
    world.say("alice", "How was the jazz festival in Montreal?", session="s2", at_minutes=200)
    reply = world.say("alice", "Honestly the best weekend of my year, I cried twice.", session="s2", at_minutes=201)
    got = world.retriever.retrieve("alice", "How did Alice feel about the Montreal jazz festival?", k_episodes=3, k_facts=0)
    assert reply.id in got.episode_ids and "bm25" in next(e for e in got.episodes if e.episode_id == reply.id).sources


def test_graph_neighbourhood_brings_facts_and_their_evidence(world: World) -> None:
    evidence = world.say("alice", "Guess what, Anna finally got the offer.", session="s3", at_minutes=300,
                         claims=(Candidate("Anna", "works_at", "Vestas"),))
    got = world.retriever.retrieve("alice", "Where does Anna work?", k_episodes=5, k_facts=3)
    top = got.facts[0].fact
    assert (top.subject, top.relation, top.object) == ("Anna", "works_at", "Vestas")
    assert got.channels["fact_graph"] >= 1
    ep = next(e for e in got.episodes if e.episode_id == evidence.id)
    assert "graph" in ep.sources


def test_superseded_facts_are_hidden_unless_asked_for(world: World) -> None:
    world.say("alice", "I live in Oslo.", session="s4", at_minutes=400, claims=(Candidate("user", "lives_in", "Oslo"),))
    world.clock.advance(timedelta(days=1))
    world.say("alice", "I moved to Bergen.", session="s4", at_minutes=401, claims=(Candidate("user", "lives_in", "Bergen"),))
    now = world.retriever.retrieve("alice", "Which city do I live in?", k_episodes=2, k_facts=5)
    assert "Oslo" not in {f.fact.object for f in now.facts} | {f.object for f in now.profile}
    assert "Bergen" in {f.object for f in now.profile}
    everything = world.retriever.retrieve("alice", "Which city do I live in?", k_episodes=2, k_facts=5, include_superseded=True)
    assert {"Oslo", "Bergen"} <= {f.fact.object for f in everything.facts}


def test_users_never_see_each_other(world: World) -> None:
    secret = world.say("bob", "Bob's locker combination is 4-19-27 ZEBRA.", session="b1")
    got = world.retriever.retrieve("alice", "locker combination ZEBRA", k_episodes=10, k_facts=10)
    assert secret.id not in got.episode_ids
    assert all(e.text != secret.text for e in got.episodes)
    assert world.retriever.retrieve("bob", "locker combination ZEBRA", k_episodes=1, k_facts=0).episode_ids == [secret.id]


def test_a_new_process_finds_old_episodes_lexically(world: World) -> None:
    world.say("carol", "The wifi password at the cabin is MOOSE-LANTERN.", session="c1")
    fresh = world.fresh_retriever()
    got = fresh.retrieve("carol", "MOOSE-LANTERN", k_episodes=1, k_facts=0)
    assert "bm25" in got.episodes[0].sources


def test_memories_fade_and_recall_slows_the_fading(world: World) -> None:
    world.say("dave", "Dave parked the car on level 3, spot 42.", session="d1")
    key = world.say("dave", "Dave left the spare key under the blue flowerpot.", session="d1", at_minutes=1)
    retriever = world.fresh_retriever(recency=1.0)  # make the recency term dominant to see it clearly

    def scores() -> dict[str, float]:
        got = retriever.retrieve("dave", "Where did Dave park and leave the key?", k_episodes=2, k_facts=0)
        return {e.text.split()[1]: e.score for e in got.episodes}

    before = scores()
    assert retriever.retrieve("dave", "spare key flowerpot", k_episodes=1, k_facts=0).episode_ids == [key.id]
    retriever.mark_recalled("dave", [key.id])
    world.clock.advance(timedelta(days=60))
    after = scores()
    assert after["parked"] < before["parked"] and after["left"] < before["left"]
    assert before["left"] - after["left"] < before["parked"] - after["parked"]  # the recalled one kept more


def test_as_of_hides_what_happened_later(world: World) -> None:
    early = world.say("erin", "Erin signed up for pottery classes.", session="e1", at_minutes=0)
    late = world.say("erin", "Erin quit pottery classes.", session="e2", at_minutes=60 * 24 * 30)
    got = world.retriever.retrieve("erin", "pottery classes", k_episodes=5, k_facts=0, as_of=T0 + timedelta(days=1))
    assert early.id in got.episode_ids and late.id not in got.episode_ids


def test_removed_episodes_stop_coming_back(world: World) -> None:
    gone = world.say("fay", "Fay's old phone number was 555-0199 XYLOPHONE.", session="f1")
    world.episodic.delete("fay", [gone.id])
    world.retriever.remove("fay", [gone.id])
    assert world.retriever.retrieve("fay", "XYLOPHONE phone number", k_episodes=3, k_facts=0).episodes == []


@pytest.mark.parametrize(
    "kwargs",
    [dict(user_id="", query="x"), dict(user_id="alice", query="   "), dict(user_id="alice", query="x", k_episodes=-1)],
)
def test_bad_requests_say_what_was_wrong(world: World, kwargs: dict) -> None:
    with pytest.raises(InvalidInput):
        world.retriever.retrieve(**kwargs)


# ---------------------------------------------------------------------------------- z-score fusion


def test_zscore_fusion_trusts_a_hit_that_stands_out_over_flat_agreement() -> None:
    # dense: "pref" far above a flat list; bm25: a flat list in which "noise" is first by a hair.
    dense = [("pref", 0.60)] + [(f"d{i}", 0.10 + 0.001 * i) for i in range(20)] + [("noise", 0.11)]
    bm25 = [("noise", 0.20)] + [(f"d{i}", 0.19) for i in range(10)]
    fused = zscore_fusion({"dense": dense, "bm25": bm25}, {"dense": 0.7, "bm25": 1.0})
    assert fused["pref"] == 1.0 and fused["noise"] < fused["pref"]
    by_rank = rrf([[i for i, _ in dense], [i for i, _ in bm25]], k=10, weights=[0.7, 1.0])
    assert by_rank["noise"] > by_rank["pref"]  # what ranks alone make of the same lists


def test_zscore_fusion_floors_flat_lists_and_ranked_channels() -> None:
    hits = [("a", 0.5), ("b", 0.3), ("c", 0.1)]
    floored = zscore_fusion({"bm25": hits}, {"bm25": 1.0}, floors={"bm25": 0.4})
    assert floored["a"] == 1.0 and floored["b"] == floored["c"] == 0.0  # below the floor: counted, adds nothing
    assert zscore_fusion({"dense": [("only", 0.9)]}, {"dense": 1.0}) == {"only": 0.0}  # no spread, still a candidate
    graph = zscore_fusion({"dense": hits}, {"dense": 1.0, "graph": 1.0}, ranked={"graph": ["c"]}, rank_z=3.0)
    assert max(graph, key=graph.get) == "c"  # a graph hit of rank 1 counts as 3 deviations up
    assert zscore_fusion({}, {"dense": 1.0}) == {}


def test_weights_and_config_agree_on_rrf_k() -> None:
    assert RetrievalWeights().rrf_k is None and MemoryConfig(home="/tmp/x").rrf_k == 10
    with pytest.raises(InvalidInput):
        RetrievalWeights(fusion="max")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- stated preferences

FILLER = [
    "Can you recommend a good laptop for programming under 1000 dollars?",
    "Write a Python function that reverses a linked list.",
    "What is the capital of Australia?",
    "Explain how a transformer model uses attention.",
    "Can you recommend some podcasts about history?",
    "How do I fix a leaking kitchen tap?",
    "Summarize the plot of Moby Dick in three sentences.",
    "What are good stretches after a long run?",
    "Translate 'good morning' into Portuguese and Spanish.",
    "Give me a packing list for a weekend in Lisbon.",
    "What's the difference between TCP and UDP?",
    "Recommend a board game for four players.",
    "How long should I boil an egg for a runny yolk?",
    "Draft a polite email asking my landlord to fix the heating.",
    "Which places in Lisbon have the best views at sunset?",
    "What is a good name for a golden retriever puppy?",
    "Can you suggest a budget spreadsheet layout?",
    "Explain compound interest with an example.",
    "How many players are on a rugby union team?",
    "What should I look for when buying a used bicycle?",
]


def test_a_stated_preference_is_recalled_for_a_question_that_shares_no_words_with_it(world: World) -> None:
    stated = world.say("gina", "I'm strictly vegetarian, I never eat meat or fish.", session="g0")
    for i, text in enumerate(FILLER):
        world.say("gina", text, session=f"g{1 + i // 5}", at_minutes=60 * 24 * (1 + i // 5) + i)
    got = world.retriever.retrieve("gina", "Can you recommend some restaurants in Lisbon for dinner tonight?",
                                   k_episodes=5, k_facts=0)
    assert stated.id in got.episode_ids


def test_the_users_own_words_outrank_an_assistant_reply_that_echoes_the_question(world: World) -> None:
    said = world.say("ivan", "I love hiking in the Alps every summer.", session="i1")
    echo = world.say("ivan", "Tips for hiking in the Alps: start early and book the huts.", session="i2", role="assistant")
    for i, text in enumerate(FILLER[:8]):
        world.say("ivan", text, session="i3", at_minutes=10 + i)
    query = "Any tips for hiking in the Alps?"
    assert world.fresh_retriever(assistant_turns=1.0).retrieve("ivan", query, k_episodes=2, k_facts=0).episode_ids[0] == echo.id
    assert world.retriever.retrieve("ivan", query, k_episodes=2, k_facts=0).episode_ids == [said.id, echo.id]


# ------------------------------------------------------------------------------------------ summaries


def test_a_summary_of_an_old_session_is_recalled_for_a_query_about_it(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    from memory.service import Memory

    clock = ManualClock(T0)
    with Memory(MemoryConfig(home=tmp_path), embedder=embedder, clock=clock) as mem:
        sessions = {
            "trip": ["We are planning a trip to Kyoto in April.", "I want to see the cherry blossoms at Maruyama Park."],
            "car": ["My car makes a grinding noise when I brake.", "The garage says the brake pads are worn out."],
            "work": ["I have a performance review on Friday.", "I am preparing slides about our Q3 results."],
        }
        for day, (session, texts) in enumerate(sessions.items()):
            for minute, text in enumerate(texts):
                mem.remember("hana", text, session_id=session, at=T0 + timedelta(days=day, minutes=minute))
        clock.advance(timedelta(days=30))
        assert mem.consolidate("hana").summaries_added == 3

        got = mem.retriever.retrieve("hana", "What did we talk about for the Japan holiday?", k_episodes=0, k_facts=0)
        assert "Kyoto" in got.summaries[0].text and got.summaries[0].source_episode_ids
        assert got.channels["summary_dense"] == 3

        # a rare word reaches the summary lexically too (its cache was loaded from the store)
        lexical = mem.retriever.retrieve("hana", "Maruyama", k_episodes=0, k_facts=0, k_summaries=1)
        assert "bm25" in lexical.summaries[0].sources and "Kyoto" in lexical.summaries[0].text

        then = mem.retriever.retrieve("hana", "performance review slides", k_episodes=0, k_facts=0,
                                      as_of=T0 + timedelta(days=1, hours=1))
        assert then.summaries and not any("review" in s.text for s in then.summaries)  # that session came later
        assert mem.retriever.retrieve("hana", "brake pads", k_episodes=1, k_facts=0, k_summaries=0).summaries == []
