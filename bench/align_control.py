"""Objective-level control: does a user's style weight steer the reply, with no instruction in the prompt?

For each dimension (``--dimensions``, default verbosity and formality) and five weights -1, -0.5, 0, 0.5, 1, the
40 held-out questions below (none is a pole-training prompt) are answered greedily with no system prompt of
ours, and each reply is scored on the dimension (:func:`memory.preferences.reply_scores`: words for verbosity,
Heylighen–Dewaele F-score for formality, Flesch-Kincaid grade for expertise). Rows, all in the same run:

* ``cat`` — the poles merged by the weight into a LoRA (PEFT ``add_weighted_adapter``, ``cat``: exact), as the
  update worker publishes it (:mod:`editing.alignment.merge`);
* ``mod`` — the same poles fused at decoding time (:mod:`editing.alignment.mod`, MOD);
* ``instruction`` — the input-level baseline: the pole's instruction written into the system prompt (the mild
  one at |w| = 0.5, :func:`editing.alignment.instruction_for`), no adapter;
* ``base`` — the base model (every row's weight-0 setting).

``rho`` is Spearman's ρ between the five weights and the mean score per setting (goal ≥ 0.9 per dimension for
the merge); ``rho_replies`` the same over every reply (noisier: prompts differ). Poles missing for the model are
trained first (``pllm align train``'s defaults; the time is reported as ``train_s``).

    python bench/align_control.py [--limit N] [--dimensions verbosity formality] [--methods cat mod instruction]
                                  [--max-new-tokens 256] [--batch 8] [--cache-dir DIR] [--threads N] [--json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402

WEIGHTS = (-1.0, -0.5, 0.0, 0.5, 1.0)

EVAL_PROMPTS: tuple[str, ...] = (
    "How do I bake bread?",
    "Why do cats purr?",
    "What causes rain?",
    "How does a computer work?",
    "What is democracy?",
    "How do I fix a flat bicycle tire?",
    "Why do we dream?",
    "How does a compass work?",
    "What is inflation?",
    "How do fish breathe underwater?",
    "What should I know before adopting a dog?",
    "How do solar panels make electricity?",
    "Why is the ocean salty?",
    "How do I learn to play the guitar?",
    "What is a black hole?",
    "How are rainbows formed?",
    "What is the best way to study for an exam?",
    "How does the stock market work?",
    "Why do birds migrate?",
    "How do I make pancakes?",
    "What is artificial intelligence?",
    "How do glaciers move?",
    "Why do onions make you cry?",
    "How does a microwave oven heat food?",
    "What is the water cycle?",
    "How can I reduce stress?",
    "How do trains stay on the tracks?",
    "What is DNA?",
    "How do I plan a road trip?",
    "Why does ice float?",
    "How does a vaccine get approved?",
    "What makes bread rise?",
    "How do submarines dive and surface?",
    "What is a healthy amount of screen time?",
    "How do I start a vegetable garden?",
    "Why do stars twinkle?",
    "How do noise-cancelling headphones work?",
    "What is the difference between a virus and bacteria?",
    "How do I negotiate a higher salary?",
    "How are mountains formed?",
)


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    return float(rho) if rho == rho else 0.0  # nan (a constant side) → 0


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--limit", type=int, default=None, help="use the first N of the 40 prompts")
    p.add_argument("--dimensions", nargs="+", default=["verbosity", "formality"])
    p.add_argument("--methods", nargs="+", default=["cat", "mod", "instruction"], choices=["cat", "svd", "mod", "instruction"])
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="per reply (at 128 most base replies were cut: the detailed side had no room to grow)")
    p.add_argument("--batch", type=int, default=8, help="requests per decode loop")
    p.add_argument("--cache-dir", default=None, help="model cache holding the converted model and poles/ "
                                                       "(default: the settings' model cache)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    import torch

    from agent.model_level import pole_store
    from agent.settings import Settings
    from editing import GenerationSettings, LocalModel
    from editing.alignment import (TRAIN_PROMPTS, all_poles, fused_decode, instruction_for, merge_poles, pole_deltas,
                                   pole_mix, pole_of, train_poles)
    from editing.alignment.store import PoleStore
    from editing.batch_decode import decode_batch
    from memory.preferences import reply_scores

    assert not set(EVAL_PROMPTS) & set(TRAIN_PROMPTS), "an evaluation prompt is among the training prompts"
    if args.threads:
        torch.set_num_threads(args.threads)
    s = Settings() if args.cache_dir is None else Settings(model_cache=Path(args.cache_dir))
    local = LocalModel.load(s.runtime_config())
    store: PoleStore = pole_store(s)
    t0 = time.perf_counter()
    run = train_poles(local, store, reply_scores, poles=all_poles(tuple(args.dimensions)))
    train_s = time.perf_counter() - t0 if run.trained else 0.0
    prompts = list(EVAL_PROMPTS[:args.limit])
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, repetition_penalty=1.1)
    model, tok = local.model, local.tokenizer

    def encode(question: str, system: str | None) -> torch.Tensor:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return local.encode_chat(messages)

    def generate(method: str, dim: str, w: float) -> tuple[list[str], float]:
        t = time.perf_counter()
        out: list[str] = []
        deltas = (merge_poles(model, store, local.model_id, pole_mix({dim: w}), combination=method)
                  if method in ("cat", "svd") else [])
        mix = [(abs(w), pole_deltas(store.load(local.model_id, pole_of(dim, w))))] if method == "mod" and w else []
        for i in range(0, len(prompts), args.batch):
            chunk = prompts[i:i + args.batch]
            system = instruction_for(dim, w) if method == "instruction" else None
            ids = [encode(q, system) for q in chunk]
            with torch.inference_mode():
                if method == "mod":
                    out += fused_decode(model, tok, ids, [mix] * len(ids), settings)
                else:
                    out += decode_batch(model, tok, ids, settings, [deltas] * len(ids))
        return out, time.perf_counter() - t

    scores: dict[str, dict[str, dict[str, float]]] = {}
    rho: dict[str, dict[str, float]] = {}
    rho_replies: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for dim in args.dimensions:
        base_texts, secs = generate("base", dim, 0.0)
        seconds["base"] = seconds.get("base", 0.0) + secs
        base_scores = [float(reply_scores(t)[dim]) for t in base_texts]
        scores[dim] = {"base": {"0.0": sum(base_scores) / len(base_scores)}}
        rho[dim], rho_replies[dim] = {}, {}
        for method in args.methods:
            per_w: dict[str, float] = {}
            xs, ys = [], []
            for w in WEIGHTS:
                if w == 0:
                    vals = base_scores
                else:
                    texts, secs = generate(method, dim, w)
                    seconds[method] = seconds.get(method, 0.0) + secs
                    vals = [float(reply_scores(t)[dim]) for t in texts]
                per_w[str(w)] = sum(vals) / len(vals)
                xs += [w] * len(vals)
                ys += vals
            scores[dim][method] = per_w
            rho[dim][method] = round(spearman(list(WEIGHTS), [per_w[str(w)] for w in WEIGHTS]), 3)
            rho_replies[dim][method] = round(spearman(xs, ys), 3)
        rows = [[m, *(f"{v:.2f}" for v in scores[dim][m].values()), rho[dim].get(m, "")] for m in args.methods]
        rows.append(["base", "", "", f"{scores[dim]['base']['0.0']:.2f}", "", "", ""])
        print_table(f"{dim}: mean score per weight ({len(prompts)} prompts, no instruction except the "
                    "instruction row)", ["method", *map(str, WEIGHTS), "ρ"], rows)
    headline = "cat" if "cat" in args.methods else args.methods[0]
    emit_json({"rho": {d: rho[d][headline] for d in args.dimensions}, "rho_by_method": rho,
               "rho_replies": rho_replies, "scores": scores, "n_prompts": len(prompts),
               "max_new_tokens": args.max_new_tokens, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "train_s": round(train_s, 1), "model": local.model_id})


if __name__ == "__main__":
    main()
