"""Per-turn latency of the personal agent, split into recall / prompt / first token / full reply / remember.

Each turn runs the same steps as the agent's nodes (``Memory.recall``, ``build_prompt``, the chat
model's stream, ``Memory.remember`` for the message and the reply), timed one by one. The baseline is
the same model answering the same message with no memory at all (system prompt + message), in the
same run. ``overhead_pct`` = (recall + prompt + remember) p50 / turn p50 × 100.

    python bench/turn_latency.py [--turns 50] [--history 100] [--max-new-tokens 32] [--json]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._common import emit_json, parser, print_table  # noqa: E402

MESSAGES = [
    "I live in Oslo and work as a nurse.", "What should I cook tonight?", "My sister Anna visits next week.",
    "I'm allergic to peanuts.", "Can you suggest a weekend trip?", "I started learning Spanish.",
    "What do you know about my job?", "I love hiking and jazz.", "Keep your answers short, please.",
    "Where should I go for dinner?", "I have a dog named Rex.", "Any tips for sleeping better?",
    "My favorite food is sushi.", "What's a good gift for Anna?", "I moved to Bergen last month.",
    "Remind me what I'm allergic to.", "I'm planning to run a marathon.", "How do I train for it?",
    "I switched from coffee to green tea.", "What should I drink in the morning?",
]
HISTORY = [
    "Yesterday I walked Rex by the river.", "Work was busy at the hospital today.", "I watched a jazz concert.",
    "I tried a new sushi place downtown.", "Anna called me about her new job.", "I read a book about mountains.",
    "The weather in Norway is cold this week.", "I baked bread for the first time.", "My Spanish class was fun.",
    "I went to the gym after work.",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--turns", type=int, default=50)
    p.add_argument("--history", type=int, default=100, help="earlier turns stored before timing")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--model-cache", default=None, help="converted-model cache (default: the pllm home's)")
    args = p.parse_args()

    from langchain_core.messages import HumanMessage, SystemMessage

    from agent import PllmChatModel, Settings
    from agent.prompt import SYSTEM_INSTRUCTIONS, build_prompt
    from editing import GenerationSettings, LocalModel
    from memory import ManualClock, utc
    from memory.service import Memory

    settings = Settings()
    cache = Path(args.model_cache) if args.model_cache else settings.model_cache or settings.home / "models"
    local = LocalModel.load(settings.runtime_config().__class__(cache_dir=cache))
    chat = PllmChatModel(local=local, settings=GenerationSettings(max_new_tokens=args.max_new_tokens,
                                                                  repetition_penalty=1.15))
    clock = ManualClock(utc(2026, 1, 1, 9))
    with tempfile.TemporaryDirectory(prefix="pllm-bench-") as home:
        from memory import MemoryConfig

        mem = Memory(MemoryConfig(home=Path(home)), clock=clock)
        for i in range(args.history):
            clock.advance(timedelta(hours=7))
            mem.remember("u", f"{HISTORY[i % len(HISTORY)]} (day {i})", session_id=f"h{i // 10}")
        rows: dict[str, list[float]] = {k: [] for k in ("recall", "prompt", "first_token", "reply", "remember", "turn", "baseline_turn", "baseline_first_token")}
        for t in range(args.turns):
            clock.advance(timedelta(hours=3))
            msg = MESSAGES[t % len(MESSAGES)]
            t0 = time.perf_counter()
            rec = mem.recall("u", msg)
            t1 = time.perf_counter()
            built = build_prompt(user_id="u", message=msg, recollection=rec, history=[], count_tokens=local.count_tokens)
            t2 = time.perf_counter()
            first = None
            reply = ""
            for chunk in chat.stream(built.messages):
                first = first or time.perf_counter()
                reply += str(chunk.content)
            t3 = time.perf_counter()
            mem.remember("u", msg, session_id=f"t{t // 5}")
            if reply.strip():
                mem.remember("u", reply, role="assistant", session_id=f"t{t // 5}")
            t4 = time.perf_counter()
            rows["recall"].append(t1 - t0)
            rows["prompt"].append(t2 - t1)
            rows["first_token"].append((first or t3) - t0)
            rows["reply"].append(t3 - t2)
            rows["remember"].append(t4 - t3)
            rows["turn"].append(t4 - t0)
            # Baseline: the same model, the same message, no memory at all.
            b0 = time.perf_counter()
            bfirst = None
            for _chunk in chat.stream([SystemMessage(SYSTEM_INSTRUCTIONS), HumanMessage(msg)]):
                bfirst = bfirst or time.perf_counter()
            b1 = time.perf_counter()
            rows["baseline_turn"].append(b1 - b0)
            rows["baseline_first_token"].append((bfirst or b1) - b0)
        mem.close()

    ms = {k: (1000 * statistics.median(v), 1000 * pct(v, 0.95)) for k, v in rows.items()}
    memory_p50 = ms["recall"][0] + ms["prompt"][0] + ms["remember"][0]
    overhead = 100.0 * memory_p50 / ms["turn"][0]
    print_table(f"turn latency over {args.turns} turns ({args.history} earlier turns stored, "
                f"{args.max_new_tokens} new tokens max, {local.plan.describe()})",
                ["step", "p50 ms", "p95 ms"], [(k, f"{a:.1f}", f"{b:.1f}") for k, (a, b) in ms.items()])
    print(f"memory overhead (recall + prompt + remember) = {memory_p50:.1f} ms = {overhead:.1f} % of the turn p50")
    if args.json:
        emit_json({"turns": args.turns, "recall_p95_ms": round(ms["recall"][1], 2),
                   "remember_p95_ms": round(ms["remember"][1], 2), "turn_p50_ms": round(ms["turn"][0], 2),
                   "baseline_turn_p50_ms": round(ms["baseline_turn"][0], 2), "overhead_pct": round(overhead, 2),
                   "recall_p50_ms": round(ms["recall"][0], 2), "remember_p50_ms": round(ms["remember"][0], 2),
                   "first_token_p50_ms": round(ms["first_token"][0], 2),
                   "baseline_first_token_p50_ms": round(ms["baseline_first_token"][0], 2)})


if __name__ == "__main__":
    main()
