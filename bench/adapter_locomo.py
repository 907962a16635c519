"""Per-user adapters on LoCoMo: each speaker's own later turns under the base model, their adapter, another's.

Each LoCoMo speaker is a user. Their turns become chat examples (:func:`editing.oppu.own_turn_examples`: the
speaker's turn is the target, the two turns before it in the same session the context; the other speaker
plays the assistant). An adapter is trained on the examples of the first 60 % of the conversation's sessions;
the perplexity of the target tokens of the speaker's turns in the later sessions is then measured under

* ``base``  — the base model (the baseline, same run);
* ``own``   — the speaker's own adapter;
* ``other`` — the next speaker's adapter (speakers are taken round-robin over conversations, so with two or
  more conversations the other speaker is from a different conversation).

For each adapter kind (LoRA, IA3, prompt tuning): ``own_over_base`` = mean over speakers of own ppl / base ppl
(goal ≤ 0.85) and ``own_lt_other_frac`` = share of speakers whose own adapter beats the other's (goal ≥ 0.8).
``--max-train`` / ``--max-eval`` cap the examples per speaker (evenly spaced), for a quick run on a CPU.

    python bench/adapter_locomo.py [PATH] [--limit 2] [--kinds lora ia3 prompt] [--epochs 1] [--max-train 48]
        [--max-eval 24] [--threads 1] [--json]
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA, LocomoConversation, load_locomo  # noqa: E402

TRAIN_SHARE = 0.6


@dataclass
class Speaker:
    name: str
    conversation: str
    train: list[Any]  # TrainExample
    held_out: list[Any]


def _spaced(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return items
    return [items[math.floor(i * len(items) / n)] for i in range(n)]


def _speaker(conv: LocomoConversation, name: str, max_train: int, max_eval: int) -> Speaker:
    from editing.oppu import own_turn_examples

    sessions = sorted({t.session for t in conv.turns})
    cut = sessions[math.ceil(TRAIN_SHARE * len(sessions)) - 1]  # last training session
    train, held_out = [], []
    for session in sessions:
        dialogue = [{"role": "user" if t.speaker == name else "assistant",
                     "content": t.text.removeprefix(f"{t.speaker}: ")} for t in conv.turns if t.session == session]
        (train if session <= cut else held_out).extend(own_turn_examples(dialogue, context_turns=2))
    return Speaker(name, conv.sample_id, _spaced(train, max_train), _spaced(held_out, max_eval))


def speakers(conversations: Sequence[LocomoConversation], limit: int | None, max_train: int,
             max_eval: int) -> list[Speaker]:
    """Round-robin over conversations: conv0's first speaker, conv1's first, ..., then the second speakers."""
    order = [(c, c.speakers[i]) for i in (0, 1) for c in conversations]
    return [_speaker(c, name, max_train, max_eval) for c, name in order[:limit]]


def run_kind(lm: Any, users: list[Speaker], kind: str, base: dict[str, float], args: Any) -> dict[str, Any]:
    from editing.oppu import AdapterTrainConfig, example_loss, train_adapter

    config = AdapterTrainConfig(kind=kind, epochs=args.epochs, batch_size=args.batch_size,
                                max_tokens=args.max_tokens, seed=args.seed)
    t0 = time.perf_counter()
    adapters = []
    for user in users:
        report = lambda step, total, loss: print(f"  {kind} {user.name}: step {step}/{total} loss {loss:.3f}",  # noqa: E731
                                                 file=sys.stderr, flush=True)
        adapters.append(train_adapter(lm.model, lm.tokenizer, user.train, config, progress=report,
                                      base_model_id=lm.model_id))
    train_s = time.perf_counter() - t0
    rows = []
    for i, user in enumerate(users):
        other = adapters[(i + 1) % len(users)]
        own_ppl = math.exp(example_loss(lm.model, lm.tokenizer, user.held_out, adapters[i], max_tokens=args.max_tokens))
        other_ppl = math.exp(example_loss(lm.model, lm.tokenizer, user.held_out, other, max_tokens=args.max_tokens))
        rows.append((user.name, base[user.name], own_ppl, other_ppl))
    return {"own_over_base": round(statistics.mean(own / b for _, b, own, _ in rows), 4),
            "own_lt_other_frac": round(sum(own < oth for _, _, own, oth in rows) / len(rows), 4),
            "base_ppl": round(statistics.mean(r[1] for r in rows), 3),
            "own_ppl": round(statistics.mean(r[2] for r in rows), 3),
            "other_ppl": round(statistics.mean(r[3] for r in rows), 3),
            "train_s": round(train_s, 1), "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("path", nargs="?", type=Path, default=DEFAULT_DATA / "locomo" / "locomo10.json")
    p.add_argument("--limit", type=int, default=None, help="only the first N speakers (round-robin over conversations)")
    p.add_argument("--kinds", nargs="+", default=["lora", "ia3", "prompt"], choices=["lora", "ia3", "prompt"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per example (context cut from the left)")
    p.add_argument("--max-train", type=int, default=64, help="training examples per speaker (evenly spaced)")
    p.add_argument("--max-eval", type=int, default=32, help="held-out examples per speaker (evenly spaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--cache-dir", type=Path, default=Path(".pllm-home") / "models")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 2:
        p.error("--limit needs at least 2 speakers (each is compared with another speaker's adapter)")
    users = speakers(load_locomo(args.path), args.limit, args.max_train, args.max_eval)

    from editing import LocalModel, RuntimeConfig
    from editing.oppu import example_loss

    lm = LocalModel.load(RuntimeConfig(cache_dir=args.cache_dir, threads=args.threads))
    base = {u.name: math.exp(example_loss(lm.model, lm.tokenizer, u.held_out, max_tokens=args.max_tokens))
            for u in users}
    results = {kind: run_kind(lm, users, kind, base, args) for kind in args.kinds}
    for kind, r in results.items():
        print_table(f"{kind}: perplexity of each speaker's later turns ({len(users)} speakers, "
                    f"{sum(len(u.train) for u in users)} training examples, {r['train_s']} s to train)",
                    ["speaker", "base", "own adapter", "other's adapter"],
                    [(n, f"{b:.2f}", f"{o:.2f}", f"{x:.2f}") for n, b, o, x in r.pop("rows")])
    print_table("adapter kinds side by side (goals: own/base ≤ 0.85, own < other for ≥ 80 % of speakers)",
                ["kind", "own/base", "own<other", "base ppl", "own ppl", "other ppl", "train s"],
                [(k, r["own_over_base"], r["own_lt_other_frac"], r["base_ppl"], r["own_ppl"], r["other_ppl"],
                  r["train_s"]) for k, r in results.items()])
    if args.json:
        emit_json(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
