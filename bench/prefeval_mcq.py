"""PrefEval multiple choice: does the model like the reply that respects the user's stated preference best?

Each item of ``mcq_options/*.json`` has a preference, a later question and four candidate replies, the first
of which respects the preference. The options are shuffled with a seeded RNG; each is scored by the model's
log-likelihood as the assistant's reply to the prompt (the tokenizer's chat template with the generation
prompt, then the option's tokens; the four options in one forward pass over the shared prompt's KV cache,
right-padded and masked). The pick is the option with the highest **mean** log-probability per token
(``accuracy``); the highest **sum** is reported beside it (``accuracy_sum``). Chance is 0.25. No LLM judge.

Three conditions per item, same run, same model, same shuffled options:

* ``base`` — the prompt pllm's agent builds (:func:`agent.prompt.build_prompt`) with no memory: its constant
  system message and the question alone; no preference anywhere.
* ``memory`` — one user of a pllm stack (a fresh user id per item) says the preference, then at least
  ``--min-filler`` unrelated turns follow (whole filler conversations from ``filtered_inter_turns.json``,
  picked by a seeded shuffle and a day apart, as in ``bench/prefeval.py``); each turn is stored and handed to
  the update policy and worker as the agent's ``remember`` and ``adapt`` nodes do (no replies are generated:
  the filler's own assistant turns are stored). A day later the question gets the prompt the agent's
  ``recall`` and ``respond`` nodes build: ``Memory.recall`` of the question, then :func:`build_prompt` with the
  recalled facts and turns as the quoted notes (a new session, so no conversation history).
* ``memory_align`` — the same prompt, scored with the user's published adapter on the model
  (``AdapterStore.view`` → :func:`editing.hooks.apply_deltas`) after the stack's model-update jobs for the user
  have finished (``model_updates`` on; the handlers of :data:`agent.stack.MODEL_HANDLERS`), whatever layers
  it holds. With nothing published for the user (or a published version with no deltas) it equals ``memory``;
  ``n_with_adapter`` counts the items whose adapter had deltas (``n_published_empty`` the others with a version),
  ``with_adapter_accuracy`` compares ``memory`` and ``memory_align`` on them, ``align_shift`` is the mean
  absolute change of the options' per-token log-probability the adapter made there (nats), and
  ``adapter_kinds`` counts the published versions' kinds.

``pref_in_prompt`` is the share of items whose memory prompt quotes the preference turn or a fact drawn from
it. Items are taken round-robin over the 20 topics so a ``--limit`` keeps every topic represented.

    python bench/prefeval_mcq.py [ROOT] [--limit N] [--skip N] [--seed 0] [--min-filler 20] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, print_table  # noqa: E402
from bench._data import DEFAULT_DATA, McqItem, PrecomputedEmbedder, load_filler, load_prefeval_mcq  # noqa: E402
from bench.prefeval import T0, filler_for, round_robin  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from agent.stack import Stack
    from editing import ChatTurn, LocalModel
    from editing.requests import LowRankDelta

CONDITIONS = ("base", "memory", "memory_align")
# How long the bench waits for a user's model-update jobs (as the scenario checks do).
JOBS_TIMEOUT_S = 900.0

log = logging.getLogger("bench.prefeval_mcq")


# ------------------------------------------------------------------------------------ scoring

def option_logprobs(lm: "LocalModel", messages: Sequence["ChatTurn"], options: Sequence[str],
                    deltas: Sequence["LowRankDelta"] = ()) -> list[tuple[float, int]]:
    """(sum of the log-probabilities, number of tokens) of each option as the assistant's reply to ``messages``.

    The prompt (chat template, generation prompt added) is run once; its KV cache is repeated for the options,
    which run as one right-padded, masked batch. ``deltas`` are applied to the model for both passes.
    """
    import torch
    from transformers import DynamicCache

    from editing.hooks import apply_deltas

    model, tokenizer = lm.model, lm.tokenizer
    prompt = lm.encode_chat(list(messages), add_generation_prompt=True)  # (1, T)
    encoded = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    if any(not ids for ids in encoded):
        raise ValueError(f"an option has no tokens: {options!r}")
    n, width, length = len(encoded), max(len(ids) for ids in encoded), prompt.shape[1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((n, width), int(pad), dtype=torch.long, device=prompt.device)  # (n, W)
    mask = torch.zeros((n, width), dtype=torch.long, device=prompt.device)  # (n, W)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row, device=prompt.device)
        mask[i, : len(row)] = 1
    with lm.lock, torch.no_grad(), apply_deltas(model, deltas):
        cache = DynamicCache(config=model.config)
        first = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # (1, V)
        cache.batch_repeat_interleave(n)
        full_mask = torch.cat([torch.ones((n, length), dtype=torch.long, device=prompt.device), mask], dim=1)
        positions = torch.arange(length, length + width, device=prompt.device).expand(n, width)  # (n, W)
        rest = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache,
                     use_cache=True).logits  # (n, W, V): position j predicts option token j + 1
    # The prompt's last position predicts each option's first token; option position j predicts token j + 1.
    logits = torch.cat([first.expand(n, -1).unsqueeze(1), rest[:, :-1]], dim=1).float()  # (n, W, V)
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask  # (n, W)
    return [(float(token_lp[i].sum()), len(encoded[i])) for i in range(n)]


def pick(scores: Sequence[tuple[float, int]], *, mean: bool) -> int:
    """Index of the best option: highest mean log-probability per token (``mean``) or highest sum."""
    values = [s / k if mean else s for s, k in scores]
    return max(range(len(values)), key=values.__getitem__)


def shuffled(options: Sequence[str], rng: random.Random) -> tuple[list[str], int]:
    """The options in a seeded order and where the correct one (``options[0]``) went."""
    order = list(range(len(options)))
    rng.shuffle(order)
    return [options[j] for j in order], order.index(0)


# ------------------------------------------------------------------------------------ one item

@dataclass
class ItemResult:
    topic: str
    correct: int
    picks: dict[str, int] = field(default_factory=dict)  # condition → picked option (mean per token)
    picks_sum: dict[str, int] = field(default_factory=dict)  # condition → picked option (sum)
    adapter: str | None = None  # the published adapter's kind ("knowledge_edits", ...), None: none published
    adapter_deltas: int = 0  # low-rank deltas in it (0: published but empty, e.g. a layer with nothing merged yet)
    adapter_detail: str = ""  # its layers: the edits (relation = target) and the style version, if any
    pref_in_prompt: bool = False
    prompt_tokens: int = 0
    align_shift: float = 0.0  # mean |change| of the options' mean log-prob per token under the adapter (nats)
    settled: bool = True  # False: the user's model-update jobs were still pending after JOBS_TIMEOUT_S


def _settle(stack: "Stack", user: str) -> bool:
    """Wait until the turn watchers have scored every turn and the worker has run every job (False: timed out)."""
    worker = stack.agent.worker
    for handler in worker.handlers.values():
        wait = getattr(handler, "wait_idle", None)  # a turn watcher may still queue a job (adapter refresh)
        if callable(wait):
            wait(JOBS_TIMEOUT_S)
    if worker.wait_idle(JOBS_TIMEOUT_S):
        return True
    log.warning("model-update jobs for %s still pending after %.0f s; scoring with what is published", user,
                JOBS_TIMEOUT_S)
    return False


def describe_adapter(stack: "Stack", user: str) -> tuple[str | None, str]:
    """(kind, layers) of the user's published adapter version; (None, "") when nothing is published."""
    from agent.model_level import adapter_store, edit_registry

    published = next((v for v in adapter_store(stack.settings.home).versions(user)
                      if v.published), None)
    if published is None:
        return None, ""
    registry = edit_registry(stack.settings.home)
    try:
        edits = {r.id: f"{r.relation}={r.target!r}" for r in registry.list(user)}
    finally:
        registry.close()
    extra = dict(published.extra)
    layers = [edits.get(e, e) for e in extra.get("edits", [])]
    layers += [f"{k}={v}" for k, v in extra.items() if k not in ("kind", "edits")]
    return str(extra.get("kind", "adapter")), f"v{published.version}: " + ", ".join(layers)


def run_item(stack: "Stack", index: int, item: McqItem, conversations: list[list[tuple[str, str]]],
             seed: int, verbose: bool = False) -> ItemResult:
    """Store the preference and the filler for user ``mcq<index>``, then score the options in each condition."""
    from agent.chat_model import to_chat_turns
    from agent.model_level import adapter_store
    from agent.policy import DefaultPolicy
    from agent.prompt import build_prompt, quote_memory, render_fact

    lm = stack.local
    assert lm is not None
    memory, worker, clock = stack.memory, stack.agent.worker, stack.memory.clock
    policy = getattr(stack.agent, "policy", None) or DefaultPolicy()  # the policy the agent's adapt node uses
    user = f"mcq{index}"

    def say(text: str, role: str, session: str, at: Any) -> str:
        """One turn as the agent's ``remember`` and ``adapt`` nodes handle it; returns the episode id."""
        if at > clock.now():
            clock.set(at)  # type: ignore[attr-defined]  # a ManualClock
        stored = memory.remember(user, text, role=role, session_id=session, at=at)  # type: ignore[arg-type]
        if role == "user":
            worker.submit(policy.plan(user, stored.events, at))
            worker.observe(user, text, at)
        return stored.episode.id

    start = clock.now()
    pref_id = say(item.preference, "user", "s0", start)
    for c, conversation in enumerate(conversations, start=1):
        for t, (role, text) in enumerate(conversation):
            say(text, role, f"s{c}", start + timedelta(days=c, seconds=t))
    settled = _settle(stack, user)
    clock.advance(timedelta(days=1))  # type: ignore[attr-defined]
    now = clock.now()

    rec = memory.recall(user, item.question)  # the recall node
    built = build_prompt(user_id=user, message=item.question, recollection=rec, history=[],  # the respond node
                         count_tokens=lm.count_tokens, now=now)
    bare = build_prompt(user_id=user, message=item.question, recollection=None, history=[],
                        count_tokens=lm.count_tokens, now=now)
    quoted = quote_memory(item.preference)
    pref_lines = {render_fact(f, user) for f in [*rec.profile, *(sf.fact for sf in rec.facts)]
                  if pref_id in f.source_episode_ids}  # facts drawn from the preference turn
    in_prompt = any(quoted in line for line in built.episode_lines) or bool(
        pref_lines & set(built.fact_lines + built.profile_lines))

    view = adapter_store(stack.settings.home).view(user, base_model_id=lm.model_id)  # what the serving side reads
    kind, detail = describe_adapter(stack, user) if view is not None else (None, "")

    options, correct = shuffled(item.options, random.Random(f"{seed}:{index}"))
    memory_turns, base_turns = to_chat_turns(built.messages), to_chat_turns(bare.messages)
    scores = {"base": option_logprobs(lm, base_turns, options),
              "memory": option_logprobs(lm, memory_turns, options)}
    deltas = tuple(view.deltas) if view is not None else ()
    scores["memory_align"] = option_logprobs(lm, memory_turns, options, deltas) if deltas else scores["memory"]
    if verbose:
        print(f"--- {user} ({item.topic}), memory prompt:", file=sys.stderr)
        for turn in memory_turns:
            print(f"[{turn['role']}] {turn['content']}", file=sys.stderr)
        print("options: " + " | ".join(f"{'*' if j == correct else ''}{o}" for j, o in enumerate(options)),
              file=sys.stderr, flush=True)
    result = ItemResult(item.topic, correct, adapter=kind, adapter_detail=detail, adapter_deltas=len(deltas),
                        pref_in_prompt=in_prompt,
                        prompt_tokens=int(lm.encode_chat(memory_turns).shape[1]), settled=settled)
    per_token = {c: [lp / k for lp, k in s] for c, s in scores.items()}
    result.align_shift = sum(abs(a - b) for a, b in zip(per_token["memory_align"], per_token["memory"])) / len(options)
    for condition, s in scores.items():
        result.picks[condition] = pick(s, mean=True)
        result.picks_sum[condition] = pick(s, mean=False)
    return result


# ------------------------------------------------------------------------------------ summary

def summarize(results: Sequence[ItemResult]) -> dict[str, Any]:
    """Accuracy per condition overall and per topic (mean per token), the sum-based accuracy, adapter counts."""
    def acc(rows: Sequence[ItemResult], condition: str, attr: str = "picks") -> float:
        return round(sum(getattr(r, attr)[condition] == r.correct for r in rows) / len(rows), 4) if rows else 0.0

    by_topic: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_topic[r.topic].append(r)
    with_adapter = [r for r in results if r.adapter_deltas]
    return {
        "accuracy": {c: acc(results, c) for c in CONDITIONS},
        "per_topic": {t: {c: acc(rows, c) for c in CONDITIONS} | {"n": len(rows)}
                      for t, rows in sorted(by_topic.items())},
        "n": len(results),
        "n_with_adapter": len(with_adapter),
        "n_published_empty": sum(r.adapter is not None and not r.adapter_deltas for r in results),
        "accuracy_sum": {c: acc(results, c, "picks_sum") for c in CONDITIONS},
        "with_adapter_accuracy": {c: acc(with_adapter, c) for c in ("memory", "memory_align")},
        "adapter_kinds": dict(Counter(r.adapter for r in results if r.adapter is not None)),
        "align_shift": round(sum(r.align_shift for r in with_adapter) / len(with_adapter), 4) if with_adapter else 0.0,
        "pref_in_prompt": round(sum(r.pref_in_prompt for r in results) / len(results), 4) if results else 0.0,
        "n_jobs_timed_out": sum(not r.settled for r in results),
        "mean_prompt_tokens": round(sum(r.prompt_tokens for r in results) / len(results), 1) if results else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("root", nargs="?", type=Path, default=DEFAULT_DATA / "prefeval", help="the PrefEval folder")
    p.add_argument("--limit", type=int, default=200, help="items to run, round-robin over topics (0 = all 1,000)")
    p.add_argument("--skip", type=int, default=0, help="skip the first N items (of the round-robin order)")
    p.add_argument("--seed", type=int, default=0, help="option order (per item) and filler choice")
    p.add_argument("--min-filler", type=int, default=20, help="at least this many filler turns per item")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="converted-model cache (default: the pllm home's, as `pllm` uses it)")
    p.add_argument("--verbose", action="store_true", help="print each memory prompt and the options (stderr)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import bm25s  # noqa: F401 - it sets its own logger to DEBUG on import; quiet it after

    logging.getLogger("bm25s").setLevel(logging.WARNING)

    items: list[McqItem] = round_robin(load_prefeval_mcq(args.root))[args.skip:]  # type: ignore[assignment]
    items = items[: args.limit] if args.limit else items
    filler = load_filler(args.root)
    start = time.perf_counter()

    import torch

    from agent.settings import Settings
    from agent.stack import build_stack
    from editing import LocalModel
    from memory import ManualClock, MiniLMEmbedder

    if args.threads:
        torch.set_num_threads(args.threads)
    # filler_for seeds its shuffle with the index: seed 0 picks the filler bench/prefeval.py picks.
    plans = [filler_for(args.seed * 100_003 + args.skip + i, filler, args.min_filler) for i in range(len(items))]
    texts = [i.preference for i in items] + [i.question for i in items] + [t for pl in plans for c in pl for _, t in c]
    embedder = PrecomputedEmbedder(MiniLMEmbedder(), list(dict.fromkeys(texts)))
    results: list[ItemResult] = []
    with tempfile.TemporaryDirectory(prefix="pllm-prefeval-mcq-") as home:
        defaults = Settings()
        cache = args.cache_dir or defaults.model_cache or defaults.home / "models"
        settings = Settings(home=Path(home), model_cache=cache, threads=args.threads, model_updates=True)
        lm = LocalModel.load(settings.runtime_config())
        stack = build_stack(settings, clock=ManualClock(T0), local=lm, embedder=embedder)
        try:
            for i, (item, plan) in enumerate(zip(items, plans)):
                t0 = time.perf_counter()
                r = run_item(stack, args.skip + i, item, plan, args.seed, args.verbose)
                results.append(r)
                marks = " ".join(f"{c}={'✓' if r.picks[c] == r.correct else '✗'}" for c in CONDITIONS)
                print(f"  {i + 1}/{len(items)} {item.topic}: {marks} adapter={r.adapter_detail or None} "
                      f"pref_in_prompt={r.pref_in_prompt} shift={r.align_shift:.3f} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
        finally:
            stack.close()
    seconds = time.perf_counter() - start
    summary = summarize(results)
    filler_turns = sum(sum(len(c) for c in pl) for pl in plans) / max(len(plans), 1)
    rows = [(t, *(f"{v[c]:.3f}" for c in CONDITIONS), v["n"]) for t, v in summary["per_topic"].items()]
    rows.append(("overall", *(f"{summary['accuracy'][c]:.3f}" for c in CONDITIONS), summary["n"]))
    rows.append(("overall (sum)", *(f"{summary['accuracy_sum'][c]:.3f}" for c in CONDITIONS), summary["n"]))
    print_table(f"PrefEval multiple choice — accuracy (mean log-prob per token; chance 0.25), {summary['n']} items, "
                f"{filler_turns:.1f} filler turns each, {summary['n_with_adapter']} with a published adapter (deltas), "
                f"preference in the prompt {summary['pref_in_prompt']:.0%}, {seconds:.0f} s",
                ["topic", *CONDITIONS, "n"], rows)
    if args.json:
        emit_json({**summary, "seed": args.seed, "filler_turns": round(filler_turns, 1), "seconds": round(seconds, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
