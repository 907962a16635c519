"""Latency of ``Memory.remember`` and ``Memory.recall`` as one user's memory grows, beside LangGraph's InMemoryStore.

Per size N (default 1k, 10k, 50k) a fresh home holds 100 users: the measured user has N episodes, the
99 others 3 each. Then 100 ``remember(turn)`` calls (embed + extract + graph + Chroma, a third of them
fact-bearing) and 100 ``recall(query)`` calls are timed one by one. The baseline is LangGraph's
``InMemoryStore`` indexed with the same embedder (``LangChainEmbeddings``), loaded with the same texts
and doing the same writes (``put``) and searches (``search(limit=recall_k)``).

Bulk load (not timed; its rate is printed): texts are drawn from a pool of template sentences whose
vectors are computed once with the real model; each bulk episode gets its pool sentence's vector plus a
little Gaussian noise (renormalized), so the HNSW index sees a realistic spread without embedding 50k
texts. Episodes go straight into the episodic store in batches and into the SQLite ``episodes`` table in
one transaction; the user also gets N/20 (at most 500) "likes" facts through ``KnowledgeGraph.apply`` and
their semantic items. The baseline store receives the same texts with the same vectors (its embedding
function looks bulk texts up; the timed ``put``s and searches embed for real). The first recall after the
load (which builds the BM25 index) is not timed, and is reported as ``warm_recall_ms``.

    python bench/memory_speed.py [--sizes 1000,10000,50000] [--json]

``--json``: the last line is ``{"sizes": {"1000": {"remember_p50_ms", "remember_p95_ms", "recall_p50_ms",
"recall_p95_ms", "baseline_put_p50_ms", "baseline_put_p95_ms", "baseline_search_p50_ms",
"baseline_search_p95_ms", ...}}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

N_TIMED = 100
OTHER_USERS = 99
OTHER_TURNS = 3
BATCH = 1000
NOISE = 0.05  # per-dimension σ of the noise added to a pool vector (unit vectors, 384 dims)

TOPICS = ["the garden", "my piano lessons", "the train to work", "a river walk", "sushi night", "chess club",
          "the winter holidays", "our trip to Lisbon", "the new cat", "my sister's wedding", "the budget meeting",
          "a running injury", "the book club", "fixing the bike", "a concert downtown", "the dentist",
          "learning Spanish", "the kids' school", "a job interview", "grandma's recipes"]
FRAMES = ["Yesterday we talked about {t} for an hour.", "I keep thinking about {t}.", "Can you remind me what I said about {t}?",
          "Today {t} went better than expected.", "I need to plan {t} next week.", "Honestly {t} stressed me out.",
          "{T} reminded me of last summer.", "My friend asked me about {t} again."]
QUERIES = ["what did I say about {t}?", "how did {t} go?", "when is {t}?", "tell me about {t}"]
FACT_TURNS = ["I like {x}", "My favorite color is {x}", "I live in {X}", "I work as a {x}"]
WORDS = ["teal", "amber", "baker", "pilot", "Oslo", "Lima", "tea", "kayaks", "jazz", "nurse", "Quito", "cedar"]


def pool_sentences() -> list[str]:
    return [f.format(t=t, T=t[0].upper() + t[1:]) for t in TOPICS for f in FRAMES]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def timed(calls: list[Callable[[], Any]]) -> list[float]:
    out = []
    for call in calls:
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


class BulkVectors:
    """Texts → vectors: pool sentences from the real model, bulk variants with noise; others embedded for real."""

    def __init__(self, embedder: Any, rng: np.random.Generator) -> None:
        self.embedder, self.dim, self.name = embedder, embedder.dim, embedder.name
        self.pool = pool_sentences()
        self.pool_vectors = embedder.embed(self.pool)  # (P, 384)
        self.known: dict[str, np.ndarray] = {}
        self.rng = rng
        self._made: dict[tuple[int, str], tuple[list[str], np.ndarray]] = {}

    def make(self, n: int, tag: str) -> tuple[list[str], np.ndarray]:
        """``n`` distinct texts and their ``(n, 384)`` unit vectors (the same again for the same ``(n, tag)``)."""
        if (n, tag) in self._made:
            return self._made[(n, tag)]
        idx = self.rng.integers(0, len(self.pool), size=n)
        texts = [f"{self.pool[j]} ({tag} {i})" for i, j in enumerate(idx)]
        vectors = self.pool_vectors[idx] + self.rng.normal(0.0, NOISE, size=(n, self.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.known.update(zip(texts, vectors))
        self._made[(n, tag)] = (texts, vectors.astype(np.float32))
        return self._made[(n, tag)]

    def embed(self, texts: list[str]) -> np.ndarray:  # the Embedder protocol, for the baseline's bulk puts
        missing = [t for t in texts if t not in self.known]
        real = dict(zip(missing, self.embedder.embed(missing))) if missing else {}
        return np.stack([self.known[t] if t in self.known else real[t] for t in texts]).astype(np.float32)


# ------------------------------------------------------------------------------------------ pllm


def load_pllm(mem: Any, user: str, n: int, vectors: BulkVectors, clock: Any) -> float:
    """Bulk-load ``n`` episodes (+ facts) for ``user`` and 3 for each other user; returns seconds."""
    from memory.extraction import Candidate
    from memory.parts import fact_item
    from memory.records import Episode, FactAdded

    start = time.perf_counter()
    plan = [(user, n)] + [(f"other-{i:02d}", OTHER_TURNS) for i in range(OTHER_USERS)]
    t0 = clock.now() - timedelta(days=365)
    for who, count in plan:
        texts, vecs = vectors.make(count, who)
        step = timedelta(days=365) / max(count, 1)
        episodes = [Episode(user_id=who, session_id=f"s{i // 20}", role="user", text=t, at=t0 + i * step,
                            recorded_at=t0 + i * step) for i, t in enumerate(texts)]
        for lo in range(0, count, BATCH):
            mem.episodic.add(episodes[lo:lo + BATCH], vecs[lo:lo + BATCH])
        # The SQLite record of truth, in one transaction, through the table's owner.
        with mem.parts.sql.transaction("bulk-load episodes") as conn:
            mem.parts.episodes.insert(conn, episodes)
    n_facts = min(n // 20, 500)
    if n_facts:
        candidates = [Candidate("user", "likes", f"hobby{i}", kind="preference", polarity="likes") for i in range(n_facts)]
        events = mem.graph.apply(user, candidates, episode_id=None, at=t0)
        items = [fact_item(e.fact) for e in events if isinstance(e, FactAdded)]
        _, item_vecs = vectors.make(len(items), "fact")
        mem.semantic.add(items, item_vecs)
    return time.perf_counter() - start


def run_pllm(n: int, embedder: Any, vectors: BulkVectors, rng: random.Random) -> dict[str, float]:
    from memory import ManualClock, Memory, MemoryConfig, utc

    user = "user-000"
    with tempfile.TemporaryDirectory(prefix="pllm-speed-") as home:
        clock = ManualClock(utc(2025, 1, 1))
        # The cap must not evict during the run: it is a separate cost (see consolidation).
        config = MemoryConfig(home=Path(home), max_episodes_per_user=max(10_000, 2 * n))
        with Memory(config, embedder=embedder, clock=clock) as mem:
            load_s = load_pllm(mem, user, n, vectors, clock)
            start = time.perf_counter()
            mem.recall(user, "what did I say about the garden?")  # builds the user's BM25 index
            warm_s = time.perf_counter() - start
            turns = [(rng.choice(FACT_TURNS) if i % 3 == 0 else rng.choice(FRAMES)).format(
                x=rng.choice(WORDS).lower(), X=rng.choice(WORDS), t=rng.choice(TOPICS), T="Today") + f" #{i}"
                for i in range(N_TIMED)]

            def remember(text: str) -> Callable[[], Any]:
                def call() -> None:
                    clock.advance(timedelta(minutes=1))
                    mem.remember(user, text)
                return call

            remember_s = timed([remember(t) for t in turns])
            queries = [rng.choice(QUERIES).format(t=rng.choice(TOPICS)) for _ in range(N_TIMED)]
            recall_s = timed([lambda q=q: mem.recall(user, q) for q in queries])
            assert mem.indexed_count(user) == n + N_TIMED, "the cap evicted during the bench"
    r50, r95 = percentiles(remember_s)
    q50, q95 = percentiles(recall_s)
    return {"remember_p50_ms": r50, "remember_p95_ms": r95, "recall_p50_ms": q50, "recall_p95_ms": q95,
            "load_s": load_s, "load_per_s": (n + OTHER_USERS * OTHER_TURNS) / load_s, "warm_recall_ms": warm_s * 1000}


# -------------------------------------------------------------------------------------- baseline


def run_baseline(n: int, embedder: Any, vectors: BulkVectors, rng: random.Random, recall_k: int) -> dict[str, float]:
    from langgraph.store.base import PutOp
    from langgraph.store.memory import InMemoryStore

    from memory import LangChainEmbeddings

    # Bulk texts are looked up (same vectors as pllm got); anything else is embedded by the real model.
    store = InMemoryStore(index={"dims": embedder.dim, "embed": LangChainEmbeddings.create(vectors), "fields": ["text"]})
    start = time.perf_counter()
    plan = [("user-000", n)] + [(f"other-{i:02d}", OTHER_TURNS) for i in range(OTHER_USERS)]
    for who, count in plan:
        texts = vectors.make(count, who)[0]  # the very texts pllm stored
        for lo in range(0, count, BATCH):
            store.batch([PutOp((who, "memories"), f"m{lo + i}", {"text": t}) for i, t in enumerate(texts[lo:lo + BATCH])])
    load_s = time.perf_counter() - start
    turns = [rng.choice(FRAMES).format(t=rng.choice(TOPICS), T="Today") + f" #{i}" for i in range(N_TIMED)]
    put_s = timed([lambda i=i, t=t: store.put(("user-000", "memories"), f"new{i}", {"text": t}) for i, t in enumerate(turns)])
    queries = [rng.choice(QUERIES).format(t=rng.choice(TOPICS)) for _ in range(N_TIMED)]
    search_s = timed([lambda q=q: store.search(("user-000", "memories"), query=q, limit=recall_k) for q in queries])
    p50, p95 = percentiles(put_s)
    s50, s95 = percentiles(search_s)
    return {"baseline_put_p50_ms": p50, "baseline_put_p95_ms": p95, "baseline_search_p50_ms": s50,
            "baseline_search_p95_ms": s95, "baseline_load_s": load_s}


# ------------------------------------------------------------------------------------------ main


def print_table(results: dict[str, dict[str, float]], elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"memory speed: one user among {OTHER_USERS + 1} ({N_TIMED} timed calls each; {elapsed:.0f} s)")
    for col in ("N", "remember p50/p95", "InMemoryStore put p50/p95", "recall p50/p95", "InMemoryStore search p50/p95",
                "remember p95 ×", "recall p95 ×", "bulk load"):
        table.add_column(col, justify="right")
    for size, r in results.items():
        table.add_row(
            size,
            f"{r['remember_p50_ms']:.1f} / {r['remember_p95_ms']:.1f} ms",
            f"{r['baseline_put_p50_ms']:.1f} / {r['baseline_put_p95_ms']:.1f} ms",
            f"{r['recall_p50_ms']:.1f} / {r['recall_p95_ms']:.1f} ms",
            f"{r['baseline_search_p50_ms']:.1f} / {r['baseline_search_p95_ms']:.1f} ms",
            f"{r['remember_p95_ms'] / r['baseline_put_p95_ms']:.2f}",
            f"{r['recall_p95_ms'] / r['baseline_search_p95_ms']:.2f}",
            f"{r['load_per_s']:.0f}/s",
        )
    Console().print(table)
    import torch

    print(f"goals at 50k: remember p95 <= 30 ms, recall p95 <= 50 ms; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average at the end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="comma-separated memory counts for the measured user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads for the embedder (default: torch's choice). On a loaded 2-core "
                             "box 1 thread was 60x faster than 2 per embedding (31 ms vs 1.2 s)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    from memory import MemoryConfig, MiniLMEmbedder

    start = time.perf_counter()
    embedder = MiniLMEmbedder()
    embedder.embed(["warm-up"])
    results: dict[str, dict[str, float]] = {}
    for n in sizes:
        rng = np.random.default_rng(args.seed)
        vectors = BulkVectors(embedder, rng)
        row = run_pllm(n, embedder, vectors, random.Random(args.seed))
        row.update(run_baseline(n, embedder, vectors, random.Random(args.seed), MemoryConfig(home=Path(".")).recall_k))
        results[str(n)] = row
        print(f"N={n}: " + ", ".join(f"{k}={v:.1f}" for k, v in row.items()), file=sys.stderr)
    elapsed = time.perf_counter() - start
    print_table(results, elapsed)
    if args.json:
        print(json.dumps({"sizes": {k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()},
                          "elapsed_s": round(elapsed, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
