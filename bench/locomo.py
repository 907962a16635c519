"""LoCoMo retrieval: recall@5/@10 of the evidence turns, BM25 vs dense vs pllm's hybrid recall.

For each conversation a fresh memory (under a temporary folder) stores every turn as an episode of one
user — text ``"Speaker: words [shares a photo of ...]"``, event time the session's date plus one second per
turn (so turns keep their order), session id ``s<N>`` — through ``Memory.remember`` (extraction and the
knowledge graph run). Then each QA question is asked three ways:

* ``bm25``  — :class:`memory.bm25.BM25Index` over the same raw turn texts;
* ``dense`` — ``EpisodicStore.query`` with the question's embedding (the same MiniLM model);
* ``pllm``  — ``Memory.recall(...).episodes`` (dense + BM25-with-dialogue-context + graph, fused).

recall@k of an item = share of its evidence turns among the top k. Items without a valid evidence id
are skipped and counted. Every text is embedded once, in one batch, up front.

    python bench/locomo.py [PATH] [--limit N] [--skip N] [--weight NAME=VALUE] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._data import (  # noqa: E402
    DEFAULT_DATA,
    LOCOMO_CATEGORIES,
    LocomoConversation,
    PrecomputedEmbedder,
    load_locomo,
    parse_overrides,
)

ROWS = ("bm25", "dense", "pllm")
KS = (5, 10)


def _recall(evidence: Sequence[str], ranked: Sequence[str], k: int) -> float:
    return len(set(evidence) & set(ranked[:k])) / len(evidence)


def run_conversation(conv: LocomoConversation, embedder: PrecomputedEmbedder, overrides: dict[str, object]) -> list[tuple[int, dict[str, list[str]], tuple[str, ...]]]:
    """Store the conversation, ask its questions → ``[(category, {row: ranked dia ids}, evidence)]``."""
    from memory import ManualClock, MemoryConfig
    from memory.bm25 import BM25Index
    from memory.service import Memory

    user = f"locomo-{conv.sample_id}"
    results = []
    with tempfile.TemporaryDirectory(prefix="pllm-locomo-") as home:
        clock = ManualClock(conv.turns[0].at)
        with Memory(MemoryConfig(home=Path(home)), embedder=embedder, clock=clock) as mem:
            if overrides:
                mem.retriever.weights = replace(mem.retriever.weights, **overrides)
            to_dia: dict[str, str] = {}
            position: dict[int, int] = defaultdict(int)
            for turn in conv.turns:
                at = turn.at + timedelta(seconds=position[turn.session])
                position[turn.session] += 1
                if at > clock.now():
                    clock.set(at)
                stored = mem.remember(user, turn.text, role="user", session_id=f"s{turn.session}", at=at)
                to_dia[stored.episode.id] = turn.dia_id
            clock.advance(timedelta(days=1))  # questions come after the last session
            bm25 = BM25Index()
            bm25.load_user(user, [t.dia_id for t in conv.turns], [t.text for t in conv.turns])
            k = max(KS)
            for qa in conv.qa:
                vector = embedder.embed([qa.question])[0]
                ranked = {
                    "bm25": [i for i, _ in bm25.search(user, qa.question, k)],
                    "dense": [to_dia[h.id] for h in mem.episodic.query(user, vector, k)],
                    "pllm": [to_dia[e.episode_id] for e in mem.recall(user, qa.question, k=k).episodes],
                }
                results.append((qa.category, ranked, qa.evidence))
    return results


def summarize(results: Sequence[tuple[int, dict[str, list[str]], tuple[str, ...]]]) -> dict:
    """Mean recall@k per row, overall and per category, in the JSON shape the bench prints."""
    sums: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for category, ranked, evidence in results:
        for row in ROWS:
            for k in KS:
                value = _recall(evidence, ranked[row], k)
                sums[("all", k, row)].append(value)
                sums[(str(category), k, row)].append(value)
    mean = lambda key: round(float(np.mean(sums[key])), 4) if sums[key] else None  # noqa: E731
    out: dict = {f"recall@{k}": {row: mean(("all", k, row)) for row in ROWS} for k in KS}
    out["per_category"] = {
        str(c): {f"recall@{k}": {row: mean((str(c), k, row)) for row in ROWS} for k in KS}
        | {"n": len(sums[(str(c), KS[0], ROWS[0])])}
        for c in sorted(LOCOMO_CATEGORIES)
        if sums[(str(c), KS[0], ROWS[0])]
    }
    out["n"] = len(results)
    return out


def print_table(summary: dict, skipped: int, dropped: int, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LoCoMo retrieval — {summary['n']} questions, {skipped} skipped (no evidence), "
                        f"{dropped} evidence ids naming no turn dropped, {seconds:.0f} s")
    table.add_column("category")
    table.add_column("n", justify="right")
    for k in KS:
        for row in ROWS:
            table.add_column(f"{row} @{k}", justify="right")
    rows = [(f"{c} {LOCOMO_CATEGORIES[int(c)]}", v) for c, v in summary["per_category"].items()]
    rows.append(("overall", {**summary, "n": summary["n"]}))
    for name, values in rows:
        table.add_row(name, str(values["n"]), *(f"{values[f'recall@{k}'][row]:.3f}" for k in KS for row in ROWS))
    Console(width=160).print(table)
    best = max(summary["recall@10"]["bm25"], summary["recall@10"]["dense"])
    Console().print(f"pllm vs the better baseline at @10: {100 * (summary['recall@10']['pllm'] - best):+.1f} points "
                    f"(ratio {summary['recall@10']['pllm'] / best:.3f})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_DATA / "locomo" / "locomo10.json")
    parser.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N conversations (e.g. the tuning slice)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    parser.add_argument("--weight", action="append", default=[], metavar="NAME=VALUE",
                        help="override a RetrievalWeights field for the pllm row (tuning), e.g. recency=0.1 or fusion=rrf")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import bm25s  # noqa: F401 - it sets its own logger to DEBUG on import; quiet it after

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    overrides = parse_overrides(args.weight)

    convs = load_locomo(args.path)[args.skip :]
    convs = convs[: args.limit] if args.limit else convs
    start = time.perf_counter()
    from memory import MiniLMEmbedder

    texts = [t.text for c in convs for t in c.turns] + [q.question for c in convs for q in c.qa]
    embedder = PrecomputedEmbedder(MiniLMEmbedder(), texts)
    results = []
    for conv in convs:
        results += run_conversation(conv, embedder, overrides)
        print(f"  {conv.sample_id}: {len(conv.turns)} turns, {len(conv.qa)} questions "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    summary = summarize(results)
    skipped = sum(c.skipped_no_evidence for c in convs)
    summary["skipped_no_evidence"] = skipped
    print_table(summary, skipped, sum(c.dropped_evidence_ids for c in convs), time.perf_counter() - start)
    if overrides:
        print(f"pllm weights overridden: {overrides}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
