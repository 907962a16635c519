"""The compute thread (editing.compute): where pllm runs its model arithmetic, and how callers get results back."""

from __future__ import annotations

import threading
import time

import pytest

from editing.compute import COMPUTE, ComputeThread, run_in_fresh_thread


def test_call_runs_on_one_named_thread_and_returns_or_raises() -> None:
    compute = ComputeThread(name="pllm-compute-test")
    names = {compute.call(lambda: threading.current_thread().name) for _ in range(3)}
    assert names == {"pllm-compute-test"}
    assert compute.call(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError, match="missing"):
        compute.call(lambda: {}["missing"])
    assert compute.call(lambda: "still serving") == "still serving"  # an error does not stop the thread


def test_a_call_made_on_the_compute_thread_runs_at_once() -> None:
    compute = ComputeThread(name="pllm-compute-test")
    # Without the re-entry check the inner call would wait for the outer one forever.
    assert compute.call(lambda: compute.call(lambda: threading.current_thread().name)) == "pllm-compute-test"
    assert compute.call(lambda: list(compute.iterate(lambda: iter([1, 2])))) == [1, 2]


def test_iterate_streams_items_made_on_the_compute_thread_and_raises_after_them() -> None:
    compute = ComputeThread(name="pllm-compute-test")

    def produce():
        for i in range(3):
            yield i, threading.current_thread().name
        raise ValueError("the model failed mid-reply")

    seen = []
    with pytest.raises(ValueError, match="mid-reply"):
        for item in compute.iterate(produce):
            seen.append(item)
    assert seen == [(i, "pllm-compute-test") for i in range(3)]


def test_closing_an_iterate_early_stops_its_producer_and_runs_its_cleanup() -> None:
    compute = ComputeThread(name="pllm-compute-test")
    produced: list[int] = []
    cleaned = threading.Event()

    def produce():
        try:
            for i in range(10_000):
                produced.append(i)
                time.sleep(0.001)
                yield i
        finally:
            cleaned.set()

    stream = compute.iterate(produce)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert cleaned.wait(10), "the producer's finally block never ran"
    assert len(produced) < 100
    assert compute.call(lambda: "free again") == "free again"  # the thread is not stuck in the old producer


def test_short_tasks_run_between_the_items_of_a_long_one() -> None:
    """An embedding asked for while a reply decodes is served between decode steps, not after the reply."""
    compute = ComputeThread(name="pllm-compute-test")
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def long_reply():
        for i in range(200):
            if i == 1:
                started.set()
            if i > 1 and release.is_set():
                order.append(f"step {i}")
                if i > 150:
                    break
            time.sleep(0.002)
            yield i

    consumer = threading.Thread(target=lambda: list(compute.iterate(long_reply)))
    consumer.start()
    assert started.wait(10)
    release.set()
    assert compute.call(lambda: order.append("embedding") or "ok", short=True) == "ok"
    consumer.join(20)
    assert "embedding" in order and order.index("embedding") < len(order) - 1, order


def test_disabled_compute_runs_in_the_callers_thread() -> None:
    compute = ComputeThread(name="pllm-compute-test")
    compute.enabled = False
    here = threading.current_thread().name
    assert compute.call(lambda: threading.current_thread().name) == here
    assert list(compute.iterate(lambda: iter([threading.current_thread().name]))) == [here]


def test_run_in_fresh_thread_runs_on_a_thread_that_ends_with_it() -> None:
    threads: list[threading.Thread] = []
    assert run_in_fresh_thread(lambda x: threads.append(threading.current_thread()) or x * 2, 21, name="job-1") == 42
    assert threads[0].name == "job-1" and threads[0] is not threading.current_thread()
    assert not threads[0].is_alive()
    with pytest.raises(RuntimeError, match="training diverged"):
        run_in_fresh_thread(lambda: (_ for _ in ()).throw(RuntimeError("training diverged")))


def test_the_stacks_embedder_runs_on_the_compute_thread(tmp_path, local_model, monkeypatch) -> None:
    """build_stack hands the memory's embedder the compute thread; a bare MiniLMEmbedder embeds in its caller."""
    from agent import Settings, build_stack
    from memory.embeddings import MiniLMEmbedder

    stack = build_stack(Settings(home=tmp_path / "home", model_updates=False), local=local_model)
    try:
        embedder = stack.memory.embedder
        where: list[str] = []
        real = embedder._embed
        monkeypatch.setattr(embedder, "_embed",
                            lambda texts: where.append(threading.current_thread().name) or real(texts))
        vectors = embedder.embed(["I live in Oslo.", "My dog is called Rex."])
        assert vectors.shape == (2, 384)
        assert where == [COMPUTE.name]
    finally:
        stack.close()
    bare = MiniLMEmbedder()
    assert bare.runner is None


def test_the_process_exits_cleanly_while_the_compute_thread_runs_torch(tmp_path) -> None:
    """Exiting during a reply (Ctrl-C in `pllm chat`) waits for the running kernel work instead of aborting in it."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent("""
        import threading, time, torch
        from editing.compute import COMPUTE
        started = threading.Event()
        def work():
            a = torch.randn(256, 256)
            for i in range(300):
                started.set()
                yield float((a @ a).sum())
        stream = COMPUTE.iterate(work)
        next(stream)
        started.wait()
        print("leaving mid-work", flush=True)
    """)
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=repo,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HOME": str(tmp_path)})
    assert "leaving mid-work" in out.stdout
    assert out.returncode == 0 and "terminate called" not in out.stderr, out.stderr[-2000:]


def test_an_idle_compute_thread_gives_its_openmp_workers_back(tmp_path) -> None:
    """Once idle, the compute thread keeps no OpenMP worker threads (a second live pool would slow every kernel of
    the caller's own work, e.g. a script's edits on its main thread after LocalModel.load); a caller that hands
    work over gives its own back too."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent("""
        import os, time, torch
        from editing.compute import COMPUTE
        if torch.get_num_threads() < 2:
            print("SKIP one torch thread: no OpenMP pool to give back"); raise SystemExit(0)
        tasks = lambda: len(os.listdir("/proc/self/task"))
        a = torch.randn(512, 512)
        before = tasks()
        (a @ a).sum()  # the main thread's own pool
        main_pool = tasks() - before
        COMPUTE.call(lambda: float((a @ a).sum()))  # main gives its pool back, the compute thread makes one
        time.sleep(0.5)
        print("RESULT", main_pool, tasks() - before)
    """)
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=repo,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    main_pool, after = map(int, out.stdout.split("RESULT")[1].split())
    assert main_pool >= 1  # the main thread's pool had worker threads
    assert after == 1, f"{after} threads more than before: only the compute thread itself should be left"
