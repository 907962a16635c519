"""One thread for the process's model arithmetic on CPU.

Why: PyTorch's CPU kernels (MKL's GEMV/GEMM, ATen's loops) run on GNU OpenMP, and libgomp keeps a pool of
worker threads per calling thread for as long as that thread lives. As soon as two live threads own pools,
libgomp counts more managed threads than CPUs and throttles every pool to near-zero spin-waiting, so each of
the many tiny parallel regions of a decode step pays a futex wake-up. Measured on 2 cores: a 576×1536 GEMV takes
0.03 ms on the only thread that ever ran torch and 0.14 ms on a second one; a SmolLM2 decode step 28 ms against
50-57 ms. A server has many threads (the web server's, LangGraph's node threads, batch leaders, the update
worker), so pllm sends its model arithmetic — the chat model's prefill and decode, loading it, the sentence
embedder — to one long-lived thread, :data:`COMPUTE`, and runs training jobs on short-lived threads whose pools
end with them (:func:`run_in_fresh_thread`).

Two kinds of task: ``call(..., short=True)`` (an embedding: milliseconds) may run between the steps of a running
decode (the decode loops call :meth:`ComputeThread.drain`), so a request that needs its recall embedded before
it can join a batch is not held up by the whole batch; long tasks (a decode, a load) run one after another.
A task submitted from the compute thread itself runs at once (no deadlock on re-entry).

Pools are also given back (:func:`release_pool`, OpenMP 5's ``omp_pause_resource_all``): the compute thread
frees its pool whenever it runs out of work, and a thread that hands work to it frees its own first. So a script
that loads the model (on the compute thread) and then runs its own arithmetic on its main thread, or the other
way round, keeps one live pool at a time and full speed.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["COMPUTE", "ComputeThread", "release_pool", "run_in_fresh_thread"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_ITEM, _END, _ERROR = object(), object(), object()


class ComputeThread:
    """A single daemon thread that runs submitted tasks, short ones first; started on first use."""

    def __init__(self, name: str = "pllm-compute") -> None:
        self.name = name
        self._short: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._long: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._wake = threading.Semaphore(0)  # one release per queued task
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closing = False
        self._exit_hook = False
        # False (or PLLM_COMPUTE_THREAD=0): every call runs in its caller's thread, as before this module existed.
        self.enabled = os.environ.get("PLLM_COMPUTE_THREAD", "1").strip() not in ("0", "false", "off", "no")

    # ------------------------------------------------------------------------------------------ running

    def here(self) -> bool:
        """True on the compute thread itself."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _ensure(self) -> None:
        with self._start_lock:
            if self._closing:
                raise RuntimeError("the interpreter is shutting down: no more model arithmetic is taken")
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
                if not self._exit_hook:
                    _at_thread_exit(self._stop)
                    self._exit_hook = True

    def _stop(self) -> None:
        """At interpreter exit, before threads are joined: let the running task end, then stop the thread.

        A daemon thread still inside a torch kernel when the interpreter finalizes aborts the process
        ("terminate called without an active exception"); waiting for the task (as the executor threads that
        ran decodes before this module were waited for) avoids that."""
        with self._start_lock:
            self._closing = True
            thread = self._thread
        if thread is not None and thread.is_alive() and not self.here():
            self._wake.release()
            thread.join(_EXIT_WAIT_S)

    def _loop(self) -> None:
        while True:
            self._wake.acquire()
            if self._closing:
                return
            try:
                task = self._short.get_nowait()
            except queue.Empty:
                try:
                    task = self._long.get_nowait()
                except queue.Empty:  # a short task already ran inside a drain(): its wake-up is spare
                    continue
            self._run(task)
            if self._short.empty() and self._long.empty():
                release_pool()  # idle: the caller's own arithmetic (a script's main thread) keeps full speed

    @staticmethod
    def _run(task: tuple[Future[Any], Callable[[], Any]]) -> None:
        future, fn = task
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            future.set_exception(exc)

    def submit(self, fn: Callable[..., T], /, *args: Any, short: bool = False, **kwargs: Any) -> "Future[T]":
        """Queue ``fn(*args, **kwargs)`` on the compute thread; its future."""
        future: Future[T] = Future()
        (self._short if short else self._long).put((future, lambda: fn(*args, **kwargs)))
        self._ensure()
        self._wake.release()
        return future

    def call(self, fn: Callable[..., T], /, *args: Any, short: bool = False, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` run on the compute thread (at once when already there, or when disabled)."""
        if not self.enabled or self.here():
            return fn(*args, **kwargs)
        release_pool()  # this thread's own pool, if it has one, would slow the compute thread's
        return self.submit(fn, *args, short=short, **kwargs).result()

    def drain(self) -> int:
        """Run the short tasks queued now (from inside a long task on the compute thread); how many ran."""
        if not self.here():
            return 0
        ran = 0
        while True:
            try:
                task = self._short.get_nowait()
            except queue.Empty:
                return ran
            self._run(task)
            ran += 1

    def iterate(self, make: Callable[[], Iterator[T]]) -> Iterator[T]:
        """The items of ``make()``, produced on the compute thread and yielded here as they come.

        Short tasks queued meanwhile run between items. Closing this iterator early stops the producer at
        its next item (its ``finally`` blocks run on the compute thread)."""
        if not self.enabled or self.here():
            yield from make()
            return
        items: queue.SimpleQueue[tuple[object, Any]] = queue.SimpleQueue()
        stop = threading.Event()

        def produce() -> None:
            source = make()
            try:
                for item in source:
                    items.put((_ITEM, item))
                    if stop.is_set():
                        break
                    self.drain()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                items.put((_ERROR, exc))
                return
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
            items.put((_END, None))

        release_pool()
        self.submit(produce)
        try:
            while True:
                kind, value = items.get()
                if kind is _ITEM:
                    yield value
                elif kind is _ERROR:
                    raise value
                else:
                    return
        finally:
            stop.set()


_PAUSE_SOFT = 1  # omp_pause_soft
_pause: Callable[[int], int] | None = None
_pause_looked = False
_pause_lock = threading.Lock()


def _find_pause() -> Callable[[int], int] | None:
    """``omp_pause_resource_all`` of the OpenMP runtime already loaded in this process (torch's), or None."""
    import ctypes

    for name in ("libgomp.so.1", "libomp.so", "libomp.dylib", "libiomp5.so"):
        try:  # RTLD_NOLOAD: only a runtime that is already loaded; never load one
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            continue
        pause = getattr(lib, "omp_pause_resource_all", None)
        if pause is not None:
            pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
            return pause  # type: ignore[no-any-return]
    return None


def release_pool() -> bool:
    """Free the calling thread's OpenMP worker pool (it is made again, in microseconds, by its next parallel
    kernel); True when a runtime was found. Nothing happens before torch has loaded its OpenMP runtime."""
    global _pause, _pause_looked
    if not _pause_looked:
        if "torch" not in sys.modules:
            return False
        with _pause_lock:
            if not _pause_looked:
                _pause, _pause_looked = _find_pause(), True
    if _pause is None:
        return False
    _pause(_PAUSE_SOFT)  # -1 inside a parallel region: then nothing is freed, which is harmless
    return True


_EXIT_WAIT_S = 120.0  # the longest exit waits for a running task (a long reply or a load) to end


def _at_thread_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` at interpreter exit before non-daemon threads are joined (``concurrent.futures`` uses the same
    hook); plain ``atexit`` where that hook does not exist."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(fn)
            return
        except RuntimeError:  # already shutting down
            return
    import atexit

    atexit.register(fn)


def run_in_fresh_thread(fn: Callable[..., T], /, *args: Any, name: str = "pllm-job", **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a new thread that ends with it (its OpenMP pool ends too); result or raise."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


COMPUTE = ComputeThread()
