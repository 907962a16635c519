"""Load on ``pllm serve``: N concurrent clients doing real turns for different users over loopback HTTP.

Each client is one user; it streams its turns through ``POST /v1/chat/completions`` (SSE, the official ``openai``
client) one after another: statements of its own facts and questions about them. Measured per turn: the time to
the first content token (TTFT) and to the end of the stream. The baseline, in the same run and on the same model:
the turns the clients completed, run again one after another in-process for other users
(``PersonalAgent.stream``, no HTTP, no batching). Afterwards every user's stored turns are checked: ``lost`` =
turns a client sent that are not in its own user's memory; ``crossed`` = turns found in another user's memory.

Two ways to bound a run:

* ``--turns K`` (the default, 4): each client does K turns. The run ends with the slowest client, so near its end
  fewer than N clients are active (``all_active_s`` says until when all N were).
* ``--duration S``: a closed loop at N clients (as load tools such as wrk or locust run): each client repeats its
  script and starts no turn after S seconds; the turns begun before finish and count. All N clients are active
  until the end, so this is the throughput *at* N clients.

``--timeout-s`` stops either. The replies' tokens are counted in both phases (``reply_tokens``,
``serial_reply_tokens``): in fp32 a batched reply equals the solo one token for token, so both phases do the same
work; in bf16 a batched row may round differently and its reply may differ (``editing.batch_decode``).

    python bench/serve_load.py [--clients 4] [--turns 4 | --duration 60] [--max-new-tokens 64] [--json]

``--json`` prints {"clients", "p50_ttft_ms", "p95_ttft_ms", "p50_turn_ms", "p95_turn_ms", "turns_per_s",
"serial_turns_per_s", "ratio", "lost", "crossed", ...} as the last line.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from bench._common import emit_json, parser, print_table  # noqa: E402

CITIES = ["Lisbon", "Oslo", "Porto", "Denver", "Kyoto", "Lima", "Accra", "Quito", "Hanoi", "Perth", "Cork", "Bonn"]
FOODS = ["ramen", "tacos", "paella", "sushi", "pierogi", "falafel", "risotto", "pho", "curry", "gnocchi", "kimchi",
         "arepas"]
JOBS = ["nurse", "plumber", "teacher", "pilot", "chef", "lawyer", "baker", "architect", "dentist", "farmer", "editor",
        "welder"]
PETS = ["Rex", "Miso", "Pip", "Luna", "Bolt", "Kiwi", "Nala", "Otto", "Zuzu", "Fig", "Taro", "Juno"]


def user_turns(i: int, n: int) -> list[str]:
    """The i-th user's turns: their own facts (different from every other user's), then questions about them."""
    k = i % len(CITIES)
    script = [f"I live in {CITIES[k]}.", f"My favorite food is {FOODS[k]}.", f"I work as a {JOBS[k]}.",
              f"I have a dog named {PETS[k]}.", "Where do I live?", "What is my favorite food?", "What is my job?",
              "What is my dog called?"]
    return [script[t % len(script)] for t in range(n)]


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--turns", type=int, default=4, help="turns per client (and per serial user)")
    p.add_argument("--duration", type=float, default=None,
                   help="closed loop: each client repeats its script for this many seconds (instead of --turns)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--window-ms", type=float, default=25.0, help="the server's batch window")
    p.add_argument("--no-join", action="store_true", help="no continuous batching: requests wait for the running "
                   "batch to end (the earlier behaviour, for comparison)")
    p.add_argument("--timeout-s", type=float, default=900.0, help="stop the concurrent phase after this long")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dtype", default=None, help="the model's dtype (float32, bfloat16; default: pllm's choice)")
    p.add_argument("--model-updates", action="store_true", help="run knowledge edits on the worker meanwhile")
    args = p.parse_args()
    if args.clients < 1 or args.turns < 1:
        p.error("--clients and --turns must be at least 1")
    if args.duration is not None and not 0 < args.duration < args.timeout_s:
        p.error("--duration must be above 0 and below --timeout-s")

    import uvicorn
    from openai import OpenAI

    from agent import Settings, build_stack
    from agent.serve import create_app
    from editing import GenerationSettings

    home = Path(tempfile.mkdtemp(prefix="pllm-serve-load-"))
    settings = Settings(home=home, threads=args.threads, model_updates=args.model_updates, dtype=args.dtype,
                        max_new_tokens=args.max_new_tokens)
    stack = build_stack(settings, generation=GenerationSettings(max_new_tokens=args.max_new_tokens,
                                                                repetition_penalty=settings.repetition_penalty))
    assert stack.local is not None
    stack.agent.chat("warmup", "Hello!")  # first-call costs (kernels, the extractor, Chroma) out of both phases

    # -------------------------------------------------------------------- concurrent clients over loopback HTTP
    stack.local.enable_batching(args.window_ms, max_batch=max(2, args.clients))
    assert stack.local.batcher is not None
    stack.local.batcher.continuous = not args.no_join
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(stack), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    deadline = time.monotonic() + args.timeout_s
    last_start = time.monotonic() + (args.duration if args.duration is not None else args.timeout_s)
    ttft: list[float] = []
    turn_ms: list[float] = []
    sent: dict[str, list[str]] = {}
    completed: dict[int, list[str]] = {}  # client → the turns it completed, in order (replayed by the baseline)
    reply_tokens = 0
    finished_at: list[float] = []  # when each client ended its last turn
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(args.clients)

    def client(i: int) -> None:
        user = f"client{i}"
        nonlocal reply_tokens
        api = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused-on-loopback", max_retries=0,
                     timeout=max(60.0, args.timeout_s))
        start.wait()
        turns = user_turns(i, args.turns if args.duration is None else 1_000_000)
        for text in turns:
            if time.monotonic() > min(deadline, last_start):
                break
            with lock:
                sent.setdefault(user, []).append(text)
            t = time.perf_counter()
            first = None
            reply = []
            try:
                for chunk in api.chat.completions.create(model="pllm", user=user, stream=True,
                                                         messages=[{"role": "user", "content": text}]):
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter()
                        reply.append(chunk.choices[0].delta.content)
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    failures.append(f"{user}: {type(exc).__name__}: {exc}")
                continue
            end = time.perf_counter()
            with lock:
                turn_ms.append((end - t) * 1000)
                completed.setdefault(i, []).append(text)
                reply_tokens += count_tokens("".join(reply))
                if first is not None:
                    ttft.append((first - t) * 1000)
        with lock:
            finished_at.append(time.perf_counter())

    def count_tokens(text: str) -> int:
        return len(stack.local.tokenizer(text, add_special_tokens=False)["input_ids"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(1.0, deadline - time.monotonic() + 60))
    wall = time.perf_counter() - t0
    server.should_exit = True
    stack.local.batcher.wait_idle(timeout=60)  # a client returns when its row ends; the batch's counts come after
    batch_sizes = list(stack.local.batcher.batch_sizes) if stack.local.batcher else []
    joined = stack.local.batcher.joined if stack.local.batcher else 0
    all_active_s = (min(finished_at) - t0) if finished_at else wall

    # -------------------------------------------------------------------- serial baseline: the same turns, one by one
    stack.local.enable_batching(0)
    serial_turns = [(f"serial{i}", text) for i in sorted(completed) for text in completed[i]]
    serial_tokens = 0
    t1 = time.perf_counter()
    for user, text in serial_turns:
        serial_tokens += count_tokens("".join(stack.agent.stream(user, text)))
    serial_s = time.perf_counter() - t1
    serial_rate = len(serial_turns) / serial_s if serial_turns else float("nan")

    # -------------------------------------------------------------------- every turn in its own user's memory only
    said = {user: [e.text for e in stack.memory.episodes(user) if e.role == "user"]
            for user in stack.memory.users() if user.startswith("client")}
    lost = sum(1 for user, texts in sent.items() for text in texts if text not in said.get(user, []))
    crossed = sum(1 for user, texts in said.items() for text in texts if text not in sent.get(user, []))
    stack.close()

    done = len(turn_ms)
    summary = {
        "clients": args.clients, "turns": done, "turns_sent": sum(len(v) for v in sent.values()),
        "failed": len(failures), "p50_ttft_ms": round(_p(ttft, 0.5), 1), "p95_ttft_ms": round(_p(ttft, 0.95), 1),
        "p50_turn_ms": round(_p(turn_ms, 0.5), 1), "p95_turn_ms": round(_p(turn_ms, 0.95), 1),
        "turns_per_s": round(done / wall, 3), "serial_turns_per_s": round(serial_rate, 3),
        "ratio": round((done / wall) / serial_rate, 2), "lost": lost, "crossed": crossed,
        "mean_batch": round(statistics.mean(batch_sizes), 2) if batch_sizes else 0.0, "decode_loops": len(batch_sizes),
        "joined_mid_batch": joined,
        "wall_s": round(wall, 1), "all_active_s": round(all_active_s, 1), "serial_s": round(serial_s, 1),
        "reply_tokens": reply_tokens, "serial_reply_tokens": serial_tokens,
        "tokens_per_s": round(reply_tokens / wall, 1),
        "serial_tokens_per_s": round(serial_tokens / serial_s, 1) if serial_s else 0.0,
        "mode": f"duration {args.duration:g} s" if args.duration is not None else f"{args.turns} turns per client",
        "max_new_tokens": args.max_new_tokens, "window_ms": args.window_ms, "dtype": stack.local.plan.describe(),
    }
    print_table(f"pllm serve under load: {args.clients} clients, {summary['mode']} (max_new_tokens "
                f"{args.max_new_tokens}, batch window {args.window_ms} ms)", ["figure", "value"],
                [[k, v] for k, v in summary.items()])
    for failure in failures[:5]:
        print("failed:", failure)
    if args.json:
        emit_json(summary)


if __name__ == "__main__":
    main()
