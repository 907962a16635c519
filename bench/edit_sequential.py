"""Sequential knowledge editing for one user: N CounterFact edits in a row, each computed on top of the earlier ones.

Edit i is computed with the deltas of edits 0..i-1 hooked in and their keys passed as ``preserve=``, as a
user's edits accumulate in the agent. At the end, with all N deltas in place: efficacy of all N edits
(P(target_new) > P(ground_truth)), locality (the top-1 predictions on each case's locality prompt
unchanged from the base model) and the perplexity of a fixed neutral text, as a ratio to the base model's.
Figures are percentages; the unedited model's figures are printed beside them.

    python bench/edit_sequential.py [DATA] [--n 50] [--method rome] [--stats-dir DIR] [--threads 1] [--json]
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA  # noqa: E402
from bench._editing import aggregate, default_hparams, load_counterfact, prefetch_statistics, score_all  # noqa: E402
from bench.edit_counterfact import COUNTERFACT  # noqa: E402

# Neutral text for the perplexity check (written for this bench; nothing in it is about CounterFact's subjects).
NEUTRAL_TEXT = (
    "On most mornings the kitchen is the warmest room in the house. Someone puts the kettle on, the radio "
    "plays quietly, and the smell of toast drifts into the hallway. Breakfast is simple: bread, butter, a "
    "little jam, and a pot of tea that is usually too strong. After breakfast the dishes are washed and left "
    "to dry by the window, where the light is good and the plants on the sill grow a little every week.\n\n"
    "Walking is one of the easiest ways to stay healthy. A brisk walk of thirty minutes a day strengthens the "
    "heart, lifts the mood and helps people sleep better at night. It needs no special equipment, only a pair "
    "of comfortable shoes and a route that is safe and pleasant. Many people find that walking with a friend "
    "makes the habit easier to keep, because they do not want to let the other person down.\n\n"
    "Learning to cook takes patience more than talent. Start with a few dishes you enjoy and make them often, "
    "changing one thing at a time: a little more salt, a lower heat, a different herb. Taste as you go. Keep "
    "your knives sharp and your work surface clear, and clean up while the food is in the oven. Over time you "
    "will learn how a sauce should look when it is ready and how bread should sound when it is baked.\n\n"
    "Libraries are quiet places, but they are rarely empty. Students come to study for exams, children sit on "
    "the carpet with picture books, and older readers browse the newspapers by the door. The staff answer "
    "questions, help visitors use the computers and recommend novels to people who are not sure what to read "
    "next. A good library card may be the most useful thing in a wallet."
)

log = logging.getLogger("bench.edit_sequential")


@torch.no_grad()
def perplexity(model: Any, tok: Any, text: str) -> float:
    """exp(mean NLL per token) of ``text`` under ``model`` as it runs now."""
    ids = torch.tensor([tok(text)["input_ids"]], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0, :-1].float()  # (T - 1, V): position p predicts token p + 1
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    return math.exp(float(nll))


def merged_keys(results: Sequence[Any]) -> Mapping[str, torch.Tensor]:
    """The earlier edits' keys per module, stacked: ``{module: (m, in)}`` — what ``preserve=`` takes."""
    keys: dict[str, list[torch.Tensor]] = {}
    for result in results:
        for module, k in result.keys.items():
            keys.setdefault(module, []).append(k)
    return {module: torch.cat(ks) for module, ks in keys.items()}


def edit_in_sequence(lm: Any, cases: Sequence[Any], method: str, stats: Any = None) -> tuple[list[Any], list[float]]:
    """Each case's edit computed with all earlier deltas hooked in and their keys preserved (``stats``: C)."""
    from editing import apply_deltas, get_method

    entry = get_method(method)
    hparams = default_hparams(lm, method)
    if stats is not None and hasattr(hparams, "mom2_n_tokens"):  # measured (or loaded) once, before the clock runs
        t0 = time.perf_counter()
        prefetch_statistics(stats, [hparams])
        log.info("key statistics ready in %.1f s (measured on first use, then read from the cache)",
                 time.perf_counter() - t0)
    results, seconds = [], []
    for i, case in enumerate(cases):
        t0, c0 = time.perf_counter(), time.process_time()
        with apply_deltas(lm.model, [d for r in results for d in r.deltas]):
            [result] = entry.compute(lm.model, lm.tokenizer, [case.request], hparams, stats=stats,
                                     preserve=merged_keys(results) or None)
        seconds.append(time.perf_counter() - t0)
        results.append(result)
        log.info("edit %d/%d in %.1f s (%.1f CPU s)", i + 1, len(cases), seconds[-1], time.process_time() - c0)
    return results, seconds


def main() -> None:
    p = parser(__doc__)
    p.add_argument("data", type=Path, nargs="?", default=DEFAULT_DATA, help="the shared evaluation data folder")
    p.add_argument("--n", type=int, default=50, help="number of CounterFact edits, made one after another")
    p.add_argument("--method", default="rome", help="editing method, by name (editing.METHODS)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--cache-dir", type=Path, default=Path(".pllm-home") / "models")
    p.add_argument("--stats-dir", type=Path, default=None,
                   help="use key statistics C = E[kkᵀ] cached here (measured on first use; default: none, C isotropic)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from editing import METHODS, LocalModel, RuntimeConfig, SecondMoments, apply_deltas

    if args.method not in METHODS:
        sys.exit(f"unknown editing method {args.method!r}; known: {sorted(METHODS)}")
    cases, skipped = load_counterfact(args.data / COUNTERFACT, args.n)
    lm = LocalModel.load(RuntimeConfig(cache_dir=args.cache_dir, threads=args.threads))
    pre = score_all(lm, cases)
    ppl_base = perplexity(lm.model, lm.tokenizer, NEUTRAL_TEXT)
    stats = None
    if args.stats_dir is not None:
        stats = SecondMoments(lm.model, lm.tokenizer, model_id=lm.model_id, cache_dir=args.stats_dir)
    results, seconds = edit_in_sequence(lm, cases, args.method, stats)
    with apply_deltas(lm.model, [d for r in results for d in r.deltas]):
        post = score_all(lm, cases)
        ppl_edited = perplexity(lm.model, lm.tokenizer, NEUTRAL_TEXT)
    after, before = aggregate(pre, post)
    ppl_ratio = ppl_edited / ppl_base
    rows = [("efficacy (%)", f"{100 * before['efficacy']:.1f}", f"{100 * after['efficacy']:.1f}"),
            ("generalization (%)", f"{100 * before['generalization']:.1f}", f"{100 * after['generalization']:.1f}"),
            ("locality (%)", "100.0", f"{100 * after['locality']:.1f}"),
            ("neutral-text perplexity", f"{ppl_base:.2f}", f"{ppl_edited:.2f}"),
            ("s per edit (mean)", "", f"{sum(seconds) / len(seconds):.2f}"),
            ("s per edit (median)", "", f"{statistics.median(seconds):.2f}")]
    with_stats = "with key statistics" if stats else "no key statistics"
    print_table(f"{len(cases)} sequential {args.method} edits on {lm.model_id}, {with_stats} ({skipped} cases skipped)",
                ["figure", "unedited", f"after all {len(cases)} edits"], rows)
    emit_json({"n": len(cases), "efficacy": round(100 * after["efficacy"], 1),
               "locality": round(100 * after["locality"], 1), "ppl_ratio": round(ppl_ratio, 4),
               "generalization": round(100 * after["generalization"], 1),
               "s_per_edit": round(sum(seconds) / len(seconds), 2)})


if __name__ == "__main__":
    main()
