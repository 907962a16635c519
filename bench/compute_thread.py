"""Decode speed of agent turns with pllm's compute thread on and off (``PLLM_COMPUTE_THREAD``), same turns.

Each setting runs in its own process (a thread pool left behind by the other setting would skew it): the
default stack loads, one warm-up turn, then ``--turns`` turns through ``PersonalAgent.stream`` — the path of
``pllm chat`` and ``pllm serve``, where LangGraph runs the respond node on a worker thread. Measured: the mean
decode step (the fast step's forward, timed around each call), the mean time to first piece and the mean turn.
The baseline is ``off`` (every decode on the thread that asks for it, as before ``editing.compute``).

    python bench/compute_thread.py [--turns 8] [--max-new-tokens 64] [--json]

``--json`` prints {"step_ms": {"off", "on"}, "ttft_ms": {...}, "turn_s": {...}, "step_speedup", "turn_speedup"}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from bench._common import emit_json, parser, print_table  # noqa: E402

TURNS = ["I live in Lisbon and work as a nurse.", "What should I cook tonight?", "Where do I live?",
         "Tell me something about my city.", "My favorite food is ramen.", "What is my job?",
         "Suggest a weekend plan.", "What is my favorite food?"]


def child(turns: int, max_new_tokens: int) -> dict[str, float]:
    """One setting, in this process: the figures as a dict."""
    import statistics

    import editing.generation as generation
    from agent import Settings, build_stack
    from editing import GenerationSettings

    steps: list[float] = []
    real = generation._LlamaStep.__call__

    def timed(self, token, position):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = real(self, token, position)
        steps.append(time.perf_counter() - t)
        return out

    generation._LlamaStep.__call__ = timed  # type: ignore[method-assign]
    home = Path(tempfile.mkdtemp(prefix="pllm-compute-bench-"))
    settings = Settings(home=home, model_updates=False, max_new_tokens=max_new_tokens)
    stack = build_stack(settings, generation=GenerationSettings(max_new_tokens=max_new_tokens,
                                                                repetition_penalty=settings.repetition_penalty))
    stack.agent.chat("bench", "Hello!")
    steps.clear()
    ttft, total = [], []
    for i in range(turns):
        t = time.perf_counter()
        first = None
        for piece in stack.agent.stream("bench", TURNS[i % len(TURNS)]):
            if first is None and piece:
                first = time.perf_counter() - t
        total.append(time.perf_counter() - t)
        ttft.append(first if first is not None else total[-1])
    stack.close()
    return {"step_ms": 1000 * statistics.mean(steps), "ttft_ms": 1000 * statistics.mean(ttft),
            "turn_s": statistics.mean(total), "steps": len(steps)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--child", choices=["on", "off"], help=argparse_suppress())
    args = p.parse_args()
    if args.turns < 1:
        p.error("--turns must be at least 1")
    if args.child:
        print(json.dumps(child(args.turns, args.max_new_tokens)))
        return

    figures: dict[str, dict[str, float]] = {}
    for mode in ("off", "on"):
        env = dict(os.environ, PLLM_COMPUTE_THREAD="1" if mode == "on" else "0")
        run = subprocess.run([sys.executable, __file__, "--child", mode, "--turns", str(args.turns),
                              "--max-new-tokens", str(args.max_new_tokens)], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"the {mode!r} run failed:\n{run.stderr[-3000:]}")
        figures[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    summary = {
        "step_ms": {m: round(figures[m]["step_ms"], 1) for m in figures},
        "ttft_ms": {m: round(figures[m]["ttft_ms"], 1) for m in figures},
        "turn_s": {m: round(figures[m]["turn_s"], 3) for m in figures},
        "steps": {m: int(figures[m]["steps"]) for m in figures},
        "step_speedup": round(figures["off"]["step_ms"] / figures["on"]["step_ms"], 2),
        "turn_speedup": round(figures["off"]["turn_s"] / figures["on"]["turn_s"], 2),
        "turns": args.turns, "max_new_tokens": args.max_new_tokens,
    }
    print_table(f"agent turns with the compute thread off (baseline) and on: {args.turns} turns, "
                f"max_new_tokens {args.max_new_tokens}", ["figure", "off", "on"],
                [[k, summary[k]["off"], summary[k]["on"]] for k in ("step_ms", "ttft_ms", "turn_s", "steps")])
    print(f"decode step speed-up {summary['step_speedup']}×, turn speed-up {summary['turn_speedup']}×")
    if args.json:
        emit_json(summary)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
