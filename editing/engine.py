"""The chat model's batched decoder in a process of its own (``LocalModel.enable_engine_process``).

Why: in one process, every thread shares one interpreter lock. A decode step is hundreds of small torch ops, and
each op gives the lock up and takes it back; while a web server, LangGraph and Chroma (whose embedded client holds
the lock for the whole of each call) run Python on other threads, each take-back waits. Measured on 2 cores, one
bf16 decode step of 3 rows: 39 ms alone, 54-55 ms while another thread runs Chroma upserts or plain Python 30 % of
the time, and 1.5 s while it runs Python all the time. vLLM keeps its engine core in a process of its own for the
same reason. Here the engine process owns a copy of the base model, the prefix cache and the batcher
(:class:`~editing.batcher.RequestBatcher`, continuous batching); the serving process keeps everything else —
HTTP, the agent graph, memory, the embedder, the update worker and its model — and hands it token ids, a user's
deltas and the settings, and reads back each row's text as it is decoded.

``cpus`` pins the engine to those CPUs (and its torch to as many threads); the serving process may then be kept
off them (:func:`pin_process`), so neither preempts the other. Without ``cpus`` the OS places both. With two or more
``cpus`` the engine splits: its decode loop runs on the first with one torch thread, and each request that arrives
while a batch decodes is prefilled at once by a prefill process of its own on the others (:class:`_PrefillProcess`:
its own model copy and prefix cache), whose KV comes back through the pipe and joins the batch
(``RequestBatcher``'s ``prefill_ahead``), so the batch does not stop for a joining prompt. If the prefill process
dies, the decode loop prefills joining requests itself again.

Protocol (one duplex pipe, pickled tuples, in order):

* parent → engine: ``("req", rid, token_ids, delta_specs, settings)``, ``("idle", qid, timeout)``,
  ``("continuous", bool)``, ``("close",)``;
* engine → parent: ``("ready", model_id, placement, prefill_pid)`` or ``("failed", message)`` once at start, then
  ``("piece", rid, text)``, ``("end", rid)``, ``("error", rid, exception)``, ``("idle", qid, ok, batch_sizes,
  joined, kv_transfers)``;
* engine → prefill process: ``("prefill", pid, token_ids, delta_specs, slot)``, ``("close",)``; back: ``("ready",)``
  or ``("failed", message)``, then ``("done", pid, logits, None)`` (the KV is in shared-memory slot ``slot``),
  ``("done", pid, logits, [(keys, values) per layer])`` (pickled: no slot was free, the prompt is longer than a
  slot, or the KV is not of the slots' shape) or ``("error", pid, exception)``.

The KV of a prefill made in the prefill process comes back through shared memory (:class:`_KvSlots`: a file in
``/dev/shm`` that both processes map, one slot per prefill in flight, the engine copying its slot out as the reply
arrives): measured on 2 cores, a ~360-token prompt's 8 MB of bf16 KV took 42 ms (median) to pickle, cross the pipe
and unpickle, on the CPU that the prefills and the web server share.

A delta travels once: both sides keep the same most-recently-used table of deltas by content digest (updated in
the pipe's order), so later requests name it by digest, and the engine hands the batcher the same tensors each
time (its prefix cache keys a user's deltas by tensor identity).
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import math
import multiprocessing
import os
import pickle
import queue
import tempfile
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from editing.errors import EditingError, InvalidRequest
from editing.generation import GenerationSettings
from editing.requests import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from multiprocessing.connection import Connection

    from editing.runtime import RuntimeConfig

__all__ = ["EngineClient", "EngineUnavailable", "parse_cpus", "pin_process"]

log = logging.getLogger(__name__)

DELTA_TABLE = 512  # deltas each side keeps by digest (most recently used)
KV_SLOT_TOKENS = 2048  # a prompt up to this long has its prefill's KV sent back through shared memory
_END = object()


class EngineUnavailable(EditingError, RuntimeError):
    """The engine process could not start, or has exited; nothing more can be decoded through it."""


def parse_cpus(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"0"``, ``"0,1"``, ``"0-3"`` or a sequence of CPU numbers → a sorted tuple (None/empty → None).

    Every CPU must be one this process may run on (``os.sched_getaffinity``)."""
    if text is None or text == "" or (not isinstance(text, str) and not text):
        return None
    cpus: set[int] = set()
    if isinstance(text, str):
        for part in text.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo, hi = (int(x) for x in part.split("-", 1))
                    if hi < lo:
                        raise ValueError
                    cpus.update(range(lo, hi + 1))
                else:
                    cpus.add(int(part))
            except ValueError:
                raise InvalidRequest(f"bad CPU list {text!r}: give numbers and ranges such as '0', '0,1' or "
                                     "'0-3'") from None
    else:
        cpus.update(int(c) for c in text)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    unknown = sorted(cpus - allowed)
    if unknown:
        raise InvalidRequest(f"CPU(s) {unknown} are not available to this process (it may use {sorted(allowed)})")
    return tuple(sorted(cpus))


def pin_process(cpus: Sequence[int]) -> None:
    """Keep every thread of this process, and the threads it starts later, on ``cpus`` (Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        raise InvalidRequest("pinning to CPUs needs Linux (os.sched_setaffinity)")
    mask = set(cpus)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, mask)
        except OSError:  # a thread that ended meanwhile
            pass


def _digest(delta: LowRankDelta) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(delta.module.encode())
    for t in (delta.A, delta.B):
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _DeltaTable:
    """Deltas by digest, most recently used last; both sides update theirs in the pipe's order."""

    def __init__(self, size: int = DELTA_TABLE) -> None:
        self.size = size
        self.items: OrderedDict[str, Any] = OrderedDict()

    def touch(self, key: str, value: Any = None) -> Any:
        if value is not None:
            self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return self.items[key]


class _DeltaSender:
    """The sending side of a delta table: a delta's content the first time, its digest afterwards. Call
    :meth:`specs` and send its result under one lock, so the receiver's table changes in the same order."""

    def __init__(self) -> None:
        self.sent = _DeltaTable()
        self._digests: dict[tuple[int, int, int, int], tuple[Any, Any, str]] = {}

    def specs(self, deltas: Sequence[LowRankDelta]) -> list[tuple[Any, ...]]:
        out = []
        for delta in deltas:
            digest = self._digest_of(delta)
            if digest in self.sent.items:
                self.sent.touch(digest)
                out.append(("ref", digest))
            else:
                self.sent.touch(digest, True)
                out.append(("new", digest, delta.module, delta.A.detach().cpu(), delta.B.detach().cpu()))
        return out

    def _digest_of(self, delta: LowRankDelta) -> str:
        """Content digest, remembered per (tensor, version) while both tensors live."""
        key = (id(delta.A), delta.A._version, id(delta.B), delta.B._version)
        hit = self._digests.get(key)
        if hit is not None and hit[0]() is delta.A and hit[1]() is delta.B:
            return hit[2]
        digest = _digest(delta)
        if len(self._digests) > 4 * DELTA_TABLE:
            self._digests.clear()
        self._digests[key] = (weakref.ref(delta.A), weakref.ref(delta.B), digest)
        return digest


class EngineClient:
    """The serving side of an engine process; the same ``stream``/``submit``/``wait_idle`` as a
    :class:`~editing.batcher.RequestBatcher`, so :class:`~editing.runtime.LocalModel` uses either."""

    def __init__(self, config: "RuntimeConfig", *, window_ms: float = 25.0, max_batch: int = 8,
                 cpus: Sequence[int] | None = None, prefill_ahead: bool = True,
                 start_timeout_s: float = 600.0) -> None:
        if window_ms <= 0 or max_batch < 2:
            raise InvalidRequest(f"an engine process needs window_ms > 0 and max_batch >= 2, got {window_ms}, "
                                 f"{max_batch}")
        self.cpus = parse_cpus(cpus) if cpus is not None else None
        # decode on the first CPU, prefill the requests that join a running batch on the others, at once
        self.split = bool(prefill_ahead and self.cpus and len(self.cpus) >= 2)
        self.batch_sizes: list[int] = []  # as of the last wait_idle()
        self.joined = 0
        self.kv_transfers: dict[str, int] = {}  # how the prefill process's KV came back: {"shared": n, "pickled": m}
        self._continuous = True
        self._send_lock = threading.Lock()
        self._pending: dict[int, queue.SimpleQueue[Any]] = {}
        self._ids = itertools.count(1)
        self._deltas = _DeltaSender()
        self._dead: str | None = None
        # Not a daemon: the engine starts a prefill process of its own. It still ends with this process: it
        # stops when its pipe closes, and close() runs at exit (before multiprocessing joins its children).
        self._conn, self._proc, first = _spawn(_engine_main, (config, window_ms, max_batch, self.cpus, self.split),
                                               name="pllm-engine", daemon=False, timeout_s=start_timeout_s,
                                               what="engine process")
        me = weakref.ref(self)
        atexit.register(lambda: (lambda engine: engine.close() if engine is not None else None)(me()))
        self.model_id, self.placement, self.prefill_pid = first[1], first[2], first[3]
        self.split = self.prefill_pid is not None  # (an engine on an accelerator does not split)
        self._reader = threading.Thread(target=self._read, name="pllm-engine-reader", daemon=True)
        self._reader.start()
        log.info("engine process %d serves %s on %s%s", self._proc.pid, self.model_id, self.placement,
                 "" if not self.cpus else f", decoding on CPU {self.cpus[0]} and prefilling on {list(self.cpus[1:])}"
                 if self.split else f", CPUs {list(self.cpus)}")

    # ------------------------------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._dead is None and self._proc.is_alive()

    @property
    def continuous(self) -> bool:
        return self._continuous

    @continuous.setter
    def continuous(self, value: bool) -> None:
        self._continuous = bool(value)
        self._send(("continuous", self._continuous))

    # ------------------------------------------------------------------------------------------ requests

    def stream(self, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta],
               settings: GenerationSettings) -> Iterator[str]:
        """Queue one request in the engine now; an iterator over its reply's pieces as they are decoded."""
        rid = next(self._ids)
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending[rid] = sink
        try:
            ids = input_ids.reshape(-1).tolist()
            with self._send_lock:  # the delta table changes in the order its messages go out
                specs = self._deltas.specs(deltas)
                self._send_locked(("req", rid, ids, specs, settings))
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return self._pieces(rid, sink)

    def submit(self, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta], settings: GenerationSettings) -> str:
        """Queue one request and block until its reply is ready."""
        return "".join(self.stream(input_ids, deltas, settings))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the engine has no request queued or decoding; False if ``timeout`` ran out. Refreshes
        :attr:`batch_sizes`, :attr:`joined` and :attr:`kv_transfers` from the engine."""
        qid = next(self._ids)
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending[qid] = sink
        self._send(("idle", qid, timeout))
        try:
            reply = sink.get(timeout=None if timeout is None else timeout + 30)
        except queue.Empty:
            return False
        finally:
            self._pending.pop(qid, None)
        if isinstance(reply, BaseException):
            raise reply
        ok, self.batch_sizes, self.joined, self.kv_transfers = reply
        return bool(ok)

    def _pieces(self, rid: int, sink: "queue.SimpleQueue[Any]") -> Iterator[str]:
        try:
            while (item := sink.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._pending.pop(rid, None)

    # ------------------------------------------------------------------------------------------ the pipe

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple[Any, ...]) -> None:
        if self._dead is not None:
            raise EngineUnavailable(self._dead)
        try:
            self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except (OSError, ValueError) as exc:
            self._fail(f"the engine process is gone ({exc}); restart the server")
            raise EngineUnavailable(self._dead or "the engine process is gone") from exc

    def _read(self) -> None:
        while True:
            try:
                message = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                if self._dead is None:
                    code = self._proc.exitcode
                    self._fail("the engine process exited" + (f" (exit code {code})" if code is not None else "")
                               + "; restart the server (run with -v to see why)")
                return
            kind = message[0]
            sink = self._pending.get(message[1])
            if sink is None:
                continue
            if kind == "piece":
                sink.put(message[2])
            elif kind == "end":
                sink.put(_END)
            elif kind == "error":
                sink.put(message[2])
            elif kind == "idle":
                sink.put(tuple(message[2:]))

    def _fail(self, reason: str) -> None:
        self._dead = reason
        for sink in list(self._pending.values()):
            sink.put(EngineUnavailable(reason))

    # ------------------------------------------------------------------------------------------ stopping

    def close(self, timeout_s: float = 30.0) -> None:
        """Let the engine finish what it decodes, then stop it (idempotent)."""
        if self._dead is None:
            try:
                self._send(("close",))
            except EngineUnavailable:
                pass
        self._proc.join(timeout_s)
        _stop(self._proc)
        if self._dead is None:
            self._dead = "the engine process was closed"
        try:
            self._conn.close()
        except OSError:
            pass


def _spawn(target: Any, args: tuple[Any, ...], *, name: str, daemon: bool, timeout_s: float,
           what: str) -> tuple["Connection", Any, tuple[Any, ...]]:
    """Start ``target(pipe end, *args)`` in a spawned process (never fork a process that holds torch's threads)
    and wait for its first message, ``("ready", ...)``; (our pipe end, the process, that message). A process that
    fails, dies or takes too long is stopped, and :class:`EngineUnavailable` says which."""
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=target, name=name, daemon=daemon, args=(child, *args))
    proc.start()
    child.close()
    try:
        if not conn.poll(timeout_s):
            raise EngineUnavailable(f"the {what} did not load the model within {timeout_s:.0f} s")
        first = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError) as exc:
        _stop(proc)
        raise EngineUnavailable(f"the {what} exited while starting (exit code {proc.exitcode}); run with -v to "
                                "see its log") from exc
    except BaseException:
        _stop(proc)
        raise
    if first[0] != "ready":
        _stop(proc)
        raise EngineUnavailable(f"the {what} could not start: {first[1]}")
    return conn, proc, first


def _stop(proc: Any) -> None:
    """Stop ``proc`` if it still runs (SIGTERM, then SIGKILL)."""
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
    if proc.is_alive():  # pragma: no cover - a process that ignores SIGTERM
        proc.kill()
        proc.join(10)


# ---------------------------------------------------------------------------------------------- the engine side

def _pin_thread(cpus: Sequence[int]) -> None:
    """Keep the calling thread on ``cpus``, with as many torch threads."""
    os.sched_setaffinity(0, set(cpus))
    torch.set_num_threads(len(cpus))


def _engine_main(conn: "Connection", config: "RuntimeConfig", window_ms: float, max_batch: int,
                 cpus: tuple[int, ...] | None, split: bool = False) -> None:
    """Entry point of the engine process: load the model, then serve the pipe until it closes."""
    import dataclasses

    if cpus:
        os.sched_setaffinity(0, set(cpus))  # before torch starts its threads: they inherit it
        if split:  # one torch thread each: the decode loop's here and the prefill process's
            config = dataclasses.replace(config, threads=1)
        elif config.threads is None:
            config = dataclasses.replace(config, threads=len(cpus))
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with send_lock:
            try:
                conn.send_bytes(data)
            except (OSError, ValueError):  # the parent is gone: nothing to tell
                pass

    try:
        from editing.runtime import LocalModel

        local = LocalModel.load(dataclasses.replace(config, batch_window_ms=0.0))
        ahead = None
        if split and local.plan.device.type != "cpu":
            log.info("the engine decodes on %s: no prefill process (the split is for CPU decoding)", local.plan.device)
            split = False
        if split:
            from editing.compute import COMPUTE

            assert cpus is not None and len(cpus) >= 2
            COMPUTE.call(_pin_thread, cpus[:1])  # the decode loop runs on the compute thread, alone on its CPU:
            os.sched_setaffinity(0, set(cpus[1:]))  # this thread, and those it starts (pipe, rows), on the others
            ahead = _PrefillProcess(config, cpus[1:], slots=_KvSlots.for_model(local.model, max(2, max_batch)))
        local.enable_batching(window_ms, max_batch, prefill_ahead=ahead)
    except BaseException as exc:  # noqa: BLE001 - told to the parent, which raises it
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    batcher = local.batcher
    assert batcher is not None
    send(("ready", local.model_id, local.plan.describe(), ahead.pid if ahead is not None else None))
    table = _DeltaTable()
    device = local.plan.device

    def serve(rid: int, pieces: Iterator[str]) -> None:
        try:
            for piece in pieces:
                send(("piece", rid, piece))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the parent's iterator
            send(("error", rid, _portable(exc)))
            return
        send(("end", rid))

    def idle(qid: int, timeout: float | None) -> None:
        ok = batcher.wait_idle(timeout)
        send(("idle", qid, ok, list(batcher.batch_sizes), batcher.joined,
              dict(ahead.transfers) if ahead is not None else {}))

    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        kind = message[0]
        if kind == "close":
            break
        if kind == "continuous":
            batcher.continuous = message[1]
        elif kind == "idle":
            threading.Thread(target=idle, args=message[1:], daemon=True).start()
        elif kind == "req":
            _, rid, ids, specs, settings = message
            try:
                deltas = tuple(_resolve(table, spec, device) for spec in specs)
                input_ids = torch.tensor([ids], dtype=torch.long, device=device)
                pieces = batcher.stream(input_ids, deltas, settings)
            except BaseException as exc:  # noqa: BLE001
                send(("error", rid, _portable(exc)))
                continue
            threading.Thread(target=serve, args=(rid, pieces), name=f"pllm-engine-row-{rid}", daemon=True).start()
    batcher.wait_idle(60)  # rows still decoding finish (their callers are gone or told)
    if ahead is not None:
        ahead.close()
    conn.close()


class _Layer:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


class _Cache:
    """A prefill's KV as it came from the prefill process: what ``_LlamaStep.join`` reads (``layers[i].keys``)."""

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.layers = [_Layer(k, v) for k, v in layers]


class _KvSlots:
    """Shared-memory buffers for prefills' KV: ``tensor[slot, layer, 0 | 1, kv_heads, tokens, head_dim]`` (keys,
    values), in a file that the engine creates and unlinks once the prefill process has mapped it too (so no name is
    left behind). Pages are only taken as slots are written."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, path: str | None = None) -> None:
        self.shape, self.dtype = shape, dtype
        made = path is None
        if path is None:
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
            fd, path = tempfile.mkstemp(prefix="pllm-kv-", dir=folder)
            os.close(fd)
        self.path = path
        try:
            self.tensor = torch.from_file(path, shared=True, size=math.prod(shape), dtype=dtype).view(shape)
        except BaseException:
            if made:
                self.unlink()
            raise

    @classmethod
    def for_model(cls, model: Any, slots: int) -> "_KvSlots | None":
        """Slots for ``model``'s KV; None (every KV then comes back pickled) for a model whose config does not say
        its attention shape, or when the file cannot be made."""
        c = getattr(model, "config", None)
        try:
            heads = c.num_attention_heads
            shape = (slots, c.num_hidden_layers, 2, getattr(c, "num_key_value_heads", None) or heads,
                     min(KV_SLOT_TOKENS, getattr(c, "max_position_embeddings", KV_SLOT_TOKENS)),
                     getattr(c, "head_dim", None) or c.hidden_size // heads)
        except (AttributeError, TypeError):
            return None
        try:
            return cls(shape, model.dtype)
        except (OSError, RuntimeError) as exc:
            log.warning("no shared memory for the prefills' KV (%s): it comes back pickled through the pipe", exc)
            return None

    @property
    def slots(self) -> int:
        return self.shape[0]

    @property
    def tokens(self) -> int:
        return self.shape[4]

    def spec(self) -> tuple[str, tuple[int, ...], torch.dtype]:
        """What the prefill process maps: (path, shape, dtype)."""
        return self.path, self.shape, self.dtype

    def write(self, slot: int, cache: Any) -> bool:
        """Copy a one-row prefill's KV (``cache.layers[i].keys`` (1, heads, T, dim)) into ``slot``; False (nothing
        written) when it is not of the slots' shape and dtype."""
        layers = cache.layers
        first = layers[0].keys if layers else None
        _, n_layers, _, heads, tokens, dim = self.shape
        if (first is None or len(layers) != n_layers or first.dtype != self.dtype or first.shape[0] != 1
                or first.shape[1] != heads or first.shape[2] > tokens or first.shape[3] != dim):
            return False
        n = first.shape[2]
        for i, layer in enumerate(layers):
            self.tensor[slot, i, 0, :, :n].copy_(layer.keys[0])
            self.tensor[slot, i, 1, :, :n].copy_(layer.values[0])
        return True

    def read(self, slot: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of the first ``n`` positions of ``slot``: (keys, values) (1, heads, n, dim) per layer."""
        block = self.tensor[slot, :, :, :, :n].clone()
        return [(block[i, 0].unsqueeze(0), block[i, 1].unsqueeze(0)) for i in range(block.shape[0])]

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _PrefillProcess:
    """The engine's ``prefill_ahead``: prompts prefilled in a process of their own (its own interpreter lock and
    CPUs, so a prefill neither waits for nor stalls the decode loop), their KV sent back to join the batch (through
    ``slots`` when one is free and the prompt fits, else pickled through the pipe)."""

    def __init__(self, config: "RuntimeConfig", cpus: Sequence[int], start_timeout_s: float = 600.0,
                 slots: _KvSlots | None = None) -> None:
        self._slots = slots
        try:
            self._conn, self._proc, _ = _spawn(_prefill_main, (config, tuple(cpus),
                                                               slots.spec() if slots is not None else None),
                                               name="pllm-prefill", daemon=True, timeout_s=start_timeout_s,
                                               what="prefill process")
        finally:
            if slots is not None:
                slots.unlink()  # both processes have it mapped (or the prefill process is gone): no name stays
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._futures: dict[int, tuple[Future[Any], int | None, int]] = {}  # pid → (future, slot, prompt length)
        self._free = list(range(slots.slots)) if slots is not None else []
        self.transfers = {"shared": 0, "pickled": 0}  # how prefills' KV came back
        self._deltas = _DeltaSender()
        self._dead: str | None = None
        self._reader = threading.Thread(target=self._read, name="pllm-prefill-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def __call__(self, input_ids: torch.Tensor, deltas: tuple[LowRankDelta, ...]) -> "Future[Any] | None":
        """A future of the prompt's ``(logits, cache)``; None once the prefill process is gone (the decode loop
        then prefills it itself, as without one). A prefill in flight when it goes resolves to None as well."""
        future: Future[Any] = Future()
        pid = next(self._ids)
        ids = input_ids.reshape(-1).tolist()
        with self._lock:
            if self._dead is not None:
                return None
            fits = self._slots is not None and len(ids) <= self._slots.tokens and self._free
            slot = self._free.pop() if fits else None
            self._futures[pid] = (future, slot, len(ids))
            try:
                message = ("prefill", pid, ids, self._deltas.specs(deltas), slot)
                self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            except (OSError, ValueError):
                self._settle(pid)
                self._gone()
                return None
        return future

    def _settle(self, pid: int) -> "tuple[Future[Any], int | None, int] | None":
        """Forget request ``pid`` and free its slot (under ``_lock``)."""
        entry = self._futures.pop(pid, None)
        if entry is not None and entry[1] is not None:
            self._free.append(entry[1])
        return entry

    def _gone(self) -> None:
        if self._dead is None:
            self._dead = "the prefill process exited"
            log.warning("%s (exit code %s): joining requests are prefilled by the decode loop from now on",
                        self._dead, self._proc.exitcode)
        for pid in list(self._futures):
            future = self._settle(pid)[0]  # type: ignore[index]
            try:
                future.set_result(None)
            except InvalidStateError:  # its reply came in meanwhile
                pass

    def _read(self) -> None:
        while True:
            try:
                message = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                with self._lock:
                    self._gone()
                return
            with self._lock:
                entry = self._futures.get(message[1])
                if entry is None:
                    continue
                future, slot, n = entry
                layers, error = None, None
                try:
                    if message[0] != "done":
                        error = message[2]
                    elif message[3] is not None:
                        layers = message[3]
                        self.transfers["pickled"] += 1
                    else:  # in the slot: copied out before the slot is free again
                        assert self._slots is not None and slot is not None
                        layers = self._slots.read(slot, n)
                        self.transfers["shared"] += 1
                except Exception as exc:  # noqa: BLE001 - this request's failure, for its caller
                    error = exc
                finally:
                    self._settle(message[1])
            if error is None:
                future.set_result((message[2], _Cache(layers)))
            else:
                future.set_exception(error)

    def close(self) -> None:
        """Stop the prefill process; a prefill still in flight resolves to None (idempotent). Its exit is then
        expected, so it is not logged as a failure."""
        try:
            with self._lock:
                if self._dead is None:
                    self._dead = "the prefill process was closed"
                self._conn.send_bytes(pickle.dumps(("close",)))
        except (OSError, ValueError):
            pass
        self._proc.join(30)
        _stop(self._proc)
        self._reader.join(5)


def _prefill_main(conn: "Connection", config: "RuntimeConfig", cpus: tuple[int, ...],
                  slots_spec: tuple[str, tuple[int, ...], torch.dtype] | None = None) -> None:
    """Entry point of the prefill process: load the model, then prefill what the pipe asks for."""
    import dataclasses

    os.sched_setaffinity(0, set(cpus))
    config = dataclasses.replace(config, threads=len(cpus), batch_window_ms=0.0)
    try:
        slots = _KvSlots(slots_spec[1], slots_spec[2], path=slots_spec[0]) if slots_spec is not None else None
        from editing.batch_decode import BatchDecoder
        from editing.compute import COMPUTE
        from editing.runtime import LocalModel

        local = LocalModel.load(config)
        decoder = BatchDecoder(local.model, local.tokenizer, prefix_cache=local.prefix_cache)
    except BaseException as exc:  # noqa: BLE001 - told to the engine, which raises it
        conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        return
    conn.send_bytes(pickle.dumps(("ready",)))
    table = _DeltaTable()
    device = local.plan.device

    def prefill(ids: list[int], deltas: tuple[LowRankDelta, ...], slot: int | None) -> tuple[Any, ...]:
        logits, cache = decoder.prefill_one(torch.tensor([ids], dtype=torch.long, device=device), deltas)
        if slot is not None and slots is not None and slots.write(slot, cache):
            return logits, None
        return logits, [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]

    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if message[0] == "close":
            break
        _, pid, ids, specs, slot = message
        try:
            deltas = tuple(_resolve(table, spec, device) for spec in specs)
            logits, layers = COMPUTE.call(prefill, ids, deltas, slot)
            reply: tuple[Any, ...] = ("done", pid, logits, layers)
        except BaseException as exc:  # noqa: BLE001 - this request's error, for its caller
            reply = ("error", pid, _portable(exc))
        conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    conn.close()


def _resolve(table: _DeltaTable, spec: tuple[Any, ...], device: torch.device) -> LowRankDelta:
    if spec[0] == "ref":
        return table.touch(spec[1])
    _, digest, module, A, B = spec
    return table.touch(digest, LowRankDelta(module, A.to(device), B.to(device)))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an :class:`EngineUnavailable`-free stand-in with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__} in the engine process: {exc}")
