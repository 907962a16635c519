"""PrefEval retrieval: is the user's stated preference recalled when a later question depends on it?

For each explicit-preference item (``explicit_preference/*.json``) one user of a shared memory (users
are isolated, so this equals a fresh memory per item) says the preference, then 20+ unrelated turns
follow (whole filler conversations from ``filtered_inter_turns.json``, picked by a seeded shuffle), each
a day apart per conversation; then the item's question is asked. Rows, as in ``bench/locomo.py``:
``bm25`` (BM25Index over the same turns), ``dense`` (``EpisodicStore.query``), ``pllm``
(``Memory.recall(...).episodes``). recall@k = 1 if the preference turn is among the top k.

Items are taken round-robin over the 20 topics so a ``--limit`` keeps every topic represented.

    python bench/prefeval.py [ROOT] [--limit N] [--skip N] [--min-filler 20] [--weight NAME=VALUE] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from itertools import zip_longest
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._data import DEFAULT_DATA, PrecomputedEmbedder, PrefItem, load_filler, load_prefeval, parse_overrides  # noqa: E402
from memory.clock import utc  # noqa: E402

ROWS = ("bm25", "dense", "pllm")
KS = (5, 10)
T0 = utc(2024, 1, 1, 9)


def round_robin(items: Sequence[PrefItem]) -> list[PrefItem]:
    """Items reordered topic by topic (1st of each topic, then 2nd of each, ...)."""
    by_topic: dict[str, list[PrefItem]] = defaultdict(list)
    for item in items:
        by_topic[item.topic].append(item)
    return [i for group in zip_longest(*by_topic.values()) for i in group if i is not None]


def filler_for(index: int, filler: Sequence[Sequence[tuple[str, str]]], minimum: int) -> list[list[tuple[str, str]]]:
    """Whole filler conversations in a seeded order until they hold at least ``minimum`` turns."""
    order = list(range(len(filler)))
    random.Random(index).shuffle(order)
    chosen, turns = [], 0
    for j in order:
        if turns >= minimum:
            break
        chosen.append(list(filler[j]))
        turns += len(filler[j])
    return chosen


def run_item(mem, index: int, item: PrefItem, conversations: list[list[tuple[str, str]]], embedder) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Store the preference and the filler for user ``p<index>``, ask → ``{row: ranked tags}``
    where the preference turn's tag is ``"pref"``."""
    from memory.bm25 import BM25Index

    user, clock = f"p{index}", mem.clock
    tags: dict[str, str] = {}
    ids, texts = [], []

    def say(text: str, role: str, session: str, at) -> None:  # type: ignore[no-untyped-def]
        if at > clock.now():
            clock.set(at)
        episode = mem.remember(user, text, role=role, session_id=session, at=at).episode
        tags[episode.id] = "pref" if not tags else episode.id
        ids.append(tags[episode.id])
        texts.append(text)

    start = clock.now()
    say(item.preference, "user", "s0", start)
    for c, conversation in enumerate(conversations, start=1):
        for t, (role, text) in enumerate(conversation):
            say(text, role, f"s{c}", start + timedelta(days=c, seconds=t))
    clock.advance(timedelta(days=1))
    bm25 = BM25Index()
    bm25.load_user(user, ids, texts)
    k = max(KS)
    vector = embedder.embed([item.question])[0]
    return {
        "bm25": [i for i, _ in bm25.search(user, item.question, k)],
        "dense": [tags[h.id] for h in mem.episodic.query(user, vector, k)],
        "pllm": [tags[e.episode_id] for e in mem.recall(user, item.question, k=k).episodes],
    }


def summarize(results: Sequence[tuple[str, dict[str, list[str]]]]) -> dict:
    """Mean recall@k per row overall and per topic (``per_category`` keys are topics)."""
    hits: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for topic, ranked in results:
        for row in ROWS:
            for k in KS:
                value = float("pref" in ranked[row][:k])
                hits[("all", k, row)].append(value)
                hits[(topic, k, row)].append(value)
    mean = lambda key: round(float(np.mean(hits[key])), 4)  # noqa: E731
    topics = sorted({t for t, _ in results})
    out: dict = {f"recall@{k}": {row: mean(("all", k, row)) for row in ROWS} for k in KS}
    out["per_category"] = {
        t: {f"recall@{k}": {row: mean((t, k, row)) for row in ROWS} for k in KS} | {"n": len(hits[(t, KS[0], ROWS[0])])}
        for t in topics
    }
    out["n"] = len(results)
    return out


def print_table(summary: dict, seconds: float, filler_turns: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"PrefEval explicit preferences — {summary['n']} items, "
                        f"{filler_turns:.1f} filler turns per item on average, {seconds:.0f} s")
    table.add_column("topic")
    table.add_column("n", justify="right")
    for k in KS:
        for row in ROWS:
            table.add_column(f"{row} @{k}", justify="right")
    for name, values in [*summary["per_category"].items(), ("overall", summary)]:
        table.add_row(name, str(values["n"]), *(f"{values[f'recall@{k}'][row]:.3f}" for k in KS for row in ROWS))
    Console(width=160).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_DATA / "prefeval")
    parser.add_argument("--limit", type=int, default=200, help="items to run, round-robin over topics (0 = all 1,000)")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N items (300 = past the tuning slice)")
    parser.add_argument("--min-filler", type=int, default=20, help="at least this many filler turns per item")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    parser.add_argument("--weight", action="append", default=[], metavar="NAME=VALUE",
                        help="override a RetrievalWeights field for the pllm row (tuning), e.g. fusion=rrf")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import bm25s  # noqa: F401 - it sets its own logger to DEBUG on import; quiet it after

    logging.getLogger("bm25s").setLevel(logging.WARNING)

    items = round_robin(load_prefeval(args.root))[args.skip :]
    items = items[: args.limit] if args.limit else items
    filler = load_filler(args.root)
    start = time.perf_counter()
    from memory import ManualClock, MemoryConfig, MiniLMEmbedder
    from memory.service import Memory

    plans = [filler_for(args.skip + i, filler, args.min_filler) for i in range(len(items))]
    texts = [i.preference for i in items] + [i.question for i in items] + [t for c in filler for _, t in c]
    embedder = PrecomputedEmbedder(MiniLMEmbedder(), texts)
    results = []
    with tempfile.TemporaryDirectory(prefix="pllm-prefeval-") as home:
        with Memory(MemoryConfig(home=Path(home)), embedder=embedder, clock=ManualClock(T0)) as mem:
            if args.weight:
                mem.retriever.weights = replace(mem.retriever.weights, **parse_overrides(args.weight))
            for i, (item, plan) in enumerate(zip(items, plans)):
                results.append((item.topic, run_item(mem, args.skip + i, item, plan, embedder)))
                if (i + 1) % 50 == 0:
                    print(f"  {i + 1}/{len(items)} items ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    summary = summarize(results)
    filler_turns = float(np.mean([sum(len(c) for c in p) for p in plans]))
    print_table(summary, time.perf_counter() - start, filler_turns)
    if args.weight:
        print(f"pllm weights overridden: {parse_overrides(args.weight)}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
