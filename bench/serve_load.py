"""Load on ``pllm serve``: N concurrent clients doing real turns for different users over loopback HTTP.

Each client is one user in a process of its own (as load tools such as wrk or locust run; ``--client-threads``
runs them as threads of the server's process instead, where they share its interpreter lock). It streams its
turns through ``POST /v1/chat/completions`` (SSE, the official ``openai`` client) one after another: statements
of its own facts and questions about them. Measured per turn: the time to the first content token (TTFT) and to
the end of the stream. The baseline, in the same run and on the same model: the turns the clients completed, run
again one after another in-process for other users (``PersonalAgent.stream``, no HTTP, no batching), each with a
reply as long as the client's reply to it (``ignore_eos`` and that many tokens), so that both phases decode the
same number of tokens; ``--own-lengths`` lets each serial reply end where the model ends it. Afterwards every
user's stored turns are checked: ``lost`` = turns a client sent that are not in its own user's memory;
``crossed`` = turns found in another user's memory.

Why the same lengths: in bf16 a batched row may round differently from its solo run (``editing.batch_decode``),
and its reply may end sooner or later; with free lengths the serial replies came out 49 % longer than the
clients' in one run (3947 vs 2651 tokens) and 7 % shorter in another, which moved the turn ratio either way. In
fp32 a batched reply equals the solo one token for token, so there the lengths agree either way.

Two ways to bound a run:

* ``--turns K`` (the default, 4): each client does K turns. The run ends with the slowest client, so near its end
  fewer than N clients are active (``all_active_s`` says until when all N were).
* ``--duration S``: a closed loop at N clients: each client repeats its script and starts no turn after S seconds;
  the turns begun before finish and count. All N clients are active until the end, so this is the throughput
  *at* N clients.

``--timeout-s`` stops either. The replies' tokens are counted in both phases (``reply_tokens``,
``serial_reply_tokens``; re-tokenized text, so they may differ by a token here and there).

    python bench/serve_load.py [--clients 4] [--turns 4 | --duration 60] [--max-new-tokens 64] [--json]

``--json`` prints {"clients", "p50_ttft_ms", "p95_ttft_ms", "p50_turn_ms", "p95_turn_ms", "turns_per_s",
"serial_turns_per_s", "ratio", "lost", "crossed", ...} as the last line.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._load_client import run_client  # noqa: E402

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


def _proc_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc; 0 without a pid)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    p.add_argument("--client-threads", action="store_true", help="run the clients as threads of the server's "
                   "process (they then share its interpreter lock) instead of one process each")
    p.add_argument("--own-lengths", action="store_true", help="let each serial reply end where the model ends it "
                   "(by default it is as long as the client's reply to the same turn)")
    p.add_argument("--model-updates", action="store_true", help="run knowledge edits on the worker meanwhile")
    p.add_argument("--engine-process", action="store_true", help="decode in an engine process of its own "
                   "(LocalModel.enable_engine_process) during the concurrent phase")
    p.add_argument("--engine-cpus", default=None, metavar="CPUS", help="pin the engine process to these CPUs "
                   "('0', '0-1'); with --engine-process")
    p.add_argument("--server-cpus", default=None, metavar="CPUS", help="pin the server process to these CPUs during "
                   "the concurrent phase ('1'); its own affinity is restored for the serial phase")
    args = p.parse_args()
    if (args.engine_cpus or args.server_cpus) and not args.engine_process:
        p.error("--engine-cpus and --server-cpus go with --engine-process")
    if args.clients < 1 or args.turns < 1:
        p.error("--clients and --turns must be at least 1")
    if args.duration is not None and not 0 < args.duration < args.timeout_s:
        p.error("--duration must be above 0 and below --timeout-s")

    import uvicorn

    from agent import Settings, build_stack
    from agent.serve import create_app
    from editing import GenerationSettings

    home = Path(tempfile.mkdtemp(prefix="pllm-serve-load-"))
    settings = Settings(home=home, threads=args.threads, model_updates=args.model_updates, dtype=args.dtype,
                        max_new_tokens=args.max_new_tokens)
    base = GenerationSettings(max_new_tokens=args.max_new_tokens, repetition_penalty=settings.repetition_penalty)
    stack = build_stack(settings, generation=base)
    assert stack.local is not None
    stack.agent.chat("warmup", "Hello!")  # first-call costs (kernels, the extractor, Chroma) out of both phases

    # -------------------------------------------------------------------- concurrent clients over loopback HTTP
    own_cpus = os.sched_getaffinity(0)
    if args.engine_process:
        stack.local.enable_engine_process(args.window_ms, max_batch=max(2, args.clients), cpus=args.engine_cpus)
        if args.server_cpus:
            import torch

            from editing.compute import COMPUTE
            from editing.engine import parse_cpus, pin_process

            server_cpus = parse_cpus(args.server_cpus) or sorted(own_cpus)
            pin_process(server_cpus)
            server_threads = torch.get_num_threads()  # the compute thread's, restored for the serial phase
            COMPUTE.call(torch.set_num_threads, len(server_cpus))
    else:
        stack.local.enable_batching(args.window_ms, max_batch=max(2, args.clients))
    assert stack.local.batcher is not None
    stack.local.batcher.continuous = not args.no_join
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(stack), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    ttft: list[float] = []
    turn_ms: list[float] = []
    sent: dict[str, list[str]] = {}
    # client → (turn, reply) of the turns it completed, in order (replayed by the baseline); the replies are
    # counted in tokens after the phase, not on the server's interpreter during it
    completed: dict[int, list[tuple[str, str]]] = {}
    finished_at: list[float] = []  # when each client ended its last turn (monotonic)
    failures: list[str] = []

    n_turns = args.turns if args.duration is None else 1_000_000  # each client repeats its 8-turn script
    if args.client_threads:
        out: Any = queue.Queue()
        go: Any = threading.Event()
        workers: list[Any] = [threading.Thread(target=run_client, daemon=True, args=(
            i, port, user_turns(i, 8), n_turns, args.duration, args.timeout_s, out, go))
            for i in range(args.clients)]
    else:  # spawn, not fork: the parent holds torch's threads and a running event loop
        ctx = multiprocessing.get_context("spawn")
        out, go = ctx.Queue(), ctx.Event()
        workers = [ctx.Process(target=run_client, daemon=True, args=(
            i, port, user_turns(i, 8), n_turns, args.duration, args.timeout_s, out, go))
            for i in range(args.clients)]
    for w in workers:
        w.start()
    ready: set[int] = set()
    finished: set[int] = set()

    def take(block_s: float) -> None:
        event = out.get(timeout=block_s)
        kind, i = event[0], event[1]
        if kind == "ready":
            ready.add(i)
        elif kind == "sent":
            sent.setdefault(f"client{i}", []).append(event[2])
        elif kind == "done":
            _, _, text, first_ms, total_ms, reply = event
            turn_ms.append(total_ms)
            completed.setdefault(i, []).append((text, reply))
            if first_ms is not None:
                ttft.append(first_ms)
        elif kind == "failed":
            failures.append(event[2])
        elif kind == "finished":
            finished.add(i)
            finished_at.append(event[2])

    while len(ready | finished) < args.clients:  # every client has built its HTTP client (or failed to)
        try:
            take(120.0)
        except queue.Empty:
            sys.exit(f"only {len(ready | finished)} of {args.clients} clients started within 120 s")
    engine_pid = getattr(stack.local.batcher, "pid", None)
    t0, cpu0, engine_cpu0 = time.monotonic(), time.process_time(), _proc_cpu_s(engine_pid)
    deadline = t0 + args.timeout_s
    go.set()
    while len(finished) < args.clients:
        try:
            take(max(1.0, deadline - time.monotonic() + 60))
        except queue.Empty:
            failures.append(f"{args.clients - len(finished)} client(s) still running at the time limit")
            break
    wall, server_cpu = time.monotonic() - t0, time.process_time() - cpu0
    engine_cpu = None if engine_pid is None else _proc_cpu_s(engine_pid) - engine_cpu0
    for w in workers:
        w.join(timeout=10)
    # CPU the client processes used (they started before t0, but only built an HTTP client then)
    clients_cpu = None if args.client_threads else resource.getrusage(resource.RUSAGE_CHILDREN)
    server.should_exit = True
    stack.local.batcher.wait_idle(timeout=60)  # a client returns when its row ends; the batch's counts come after
    batch_sizes = list(stack.local.batcher.batch_sizes) if stack.local.batcher else []
    joined = stack.local.batcher.joined if stack.local.batcher else 0
    all_active_s = (min(finished_at) - t0) if finished_at else wall

    def count_tokens(text: str) -> int:
        return len(stack.local.tokenizer(text, add_special_tokens=False)["input_ids"])

    lengths = {i: [count_tokens(reply) for _, reply in turns] for i, turns in completed.items()}
    reply_tokens = sum(sum(n) for n in lengths.values())

    # -------------------------------------------------------------------- serial baseline: the same turns, one by one
    stack.local.enable_batching(0)  # (stops an engine process)
    if args.server_cpus:
        pin_process(sorted(own_cpus))
        COMPUTE.call(torch.set_num_threads, server_threads)
    serial_turns = [(f"serial{i}", text, n) for i in sorted(completed)
                    for (text, _), n in zip(completed[i], lengths[i], strict=True)]
    serial_tokens = 0
    t1 = time.perf_counter()
    for user, text, n in serial_turns:
        # the same work as the client's turn: a reply of the same length (--own-lengths: where the model ends it)
        same = None if args.own_lengths else dataclasses.replace(base, max_new_tokens=max(1, n), ignore_eos=True)
        serial_tokens += count_tokens("".join(stack.agent.stream(user, text, generation=same)))
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
        "wall_s": round(wall, 1), "server_cpu_s": round(server_cpu, 1),
        "engine_cpu_s": None if engine_cpu is None else round(engine_cpu, 1),
        "clients_cpu_s": None if clients_cpu is None else round(clients_cpu.ru_utime + clients_cpu.ru_stime, 1),
        "all_active_s": round(all_active_s, 1), "serial_s": round(serial_s, 1),
        "reply_tokens": reply_tokens, "serial_reply_tokens": serial_tokens,
        "tokens_per_s": round(reply_tokens / wall, 1),
        "serial_tokens_per_s": round(serial_tokens / serial_s, 1) if serial_s else 0.0,
        "clients_in": "threads" if args.client_threads else "processes",
        "engine": ("process" + (f" on CPUs {args.engine_cpus}" if args.engine_cpus else "")
                   + (f", server on CPUs {args.server_cpus}" if args.server_cpus else "")) if args.engine_process
        else "in the server's process",
        "serial_lengths": "own" if args.own_lengths else "same as the clients'",
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
