"""Concurrent ``generate`` and ``stream`` calls gathered for a short window and served as one batch.

Leader/follower: the first request to arrive when no batch is forming becomes the leader. It waits
``window_s`` (or until ``max_batch`` requests are queued), takes everything queued, runs it through
``run_batch`` (one decode loop per group of equal settings) and hands each waiting thread its own reply.
Requests arriving while a batch runs join it at its next step (continuous batching: ``run_batch`` calls ``admit``
after every step; a request with other settings, or one that finds the batch full, queues behind one new leader,
which takes what is left when that batch ends). A whole-reply request (:meth:`RequestBatcher.submit`)
leads in its own thread; a streaming one (:meth:`RequestBatcher.stream`) hands the lead to a short-lived
thread, so its caller can read its pieces from a queue while the batch runs (every row's text is pushed to
its request as soon as the decoder has it). A request is done when its own row ends (``run_batch``'s ``on_done``):
its caller gets the reply, or the end of its stream, then, not when the batch's longest row ends.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from editing.errors import InvalidRequest
from editing.generation import GenerationSettings
from editing.requests import LowRankDelta

__all__ = ["BatchRequest", "RequestBatcher"]

# run_batch(prompts, settings, deltas_per_row, *, on_piece, on_done, admit) -> replies; on_piece(row, text) streams
# rows' text; on_done(row, reply) hands out a row's reply when it ends; admit(active rows) hands the decode loop the
# queued requests that join it (editing.batch_decode.Admit).
RunBatch = Callable[..., list[str]]

# prefill_ahead(prompt (1, T), deltas) -> a future of its prefill, (logits (1, V), cache): see RequestBatcher
# (None, or a future that resolves to None: not made there after all; the decode loop prefills it itself)
PrefillAhead = Callable[[torch.Tensor, tuple[LowRankDelta, ...]], "Future[Any] | None"]

_END = object()  # end of a streaming request's pieces


@dataclass
class BatchRequest:
    """One queued request and, once served, its reply (or the error its batch raised)."""

    input_ids: torch.Tensor  # (1, T)
    deltas: tuple[LowRankDelta, ...]
    settings: GenerationSettings
    done: threading.Event = field(default_factory=threading.Event)
    reply: str | None = None
    error: BaseException | None = None
    pieces: "queue.SimpleQueue[object] | None" = None  # streaming requests: their text as it is decoded, then _END
    ahead: "Future[Any] | None" = None  # its prefill, started on arrival while a batch runs (prefill_ahead)


class RequestBatcher:
    """Serve concurrent requests in batches through ``run_batch(prompts, settings, deltas_per_row)``."""

    def __init__(self, run_batch: RunBatch, *, window_s: float, max_batch: int = 8, continuous: bool = True,
                 prefill_ahead: "PrefillAhead | None" = None) -> None:
        if window_s <= 0 or max_batch < 2:
            raise InvalidRequest(f"a batcher needs window_s > 0 and max_batch >= 2, got {window_s}, {max_batch}")
        self.run_batch = run_batch
        self.window_s = window_s
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[BatchRequest] = []
        self._forming = False  # a leader is waiting out its window or for the batch before it
        self._running = threading.Lock()  # one batch at a time
        self.batch_sizes: list[int] = []  # rows of every batch run (joined ones included), for logs and tests
        self.continuous = continuous  # requests may join a running batch (run_batch's admit=)
        self.joined = 0  # requests that joined a running batch
        self._leading = 0  # leaders not yet done (waiting out a window, or running a batch)
        # prefill_ahead(ids, deltas) -> a future of the prompt's prefill, made elsewhere (the engine's prefill
        # process) while the running batch goes on decoding; a request that arrives while a batch runs joins it
        # once that is done
        # (BatchDecoder.prefill_one; the decode loop then only copies its cache in). None: joining rows are
        # prefilled by the decode loop itself, between two of its steps.
        self.prefill_ahead = prefill_ahead

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is queued and no batch is forming or running; False if ``timeout`` ran out.

        A caller is woken as soon as its own row ends, so a batch may still be decoding other rows (and
        :attr:`batch_sizes` not yet hold it) when every caller has its reply; this waits for that batch too."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._forming and not self._leading, timeout)

    def _enqueue(self, request: BatchRequest) -> bool:
        """Queue ``request``; True when its caller must lead the next batch."""
        if self.prefill_ahead is not None and self.continuous and self._running.locked():
            request.ahead = self.prefill_ahead(request.input_ids, request.deltas)  # joins the running batch
        with self._cond:
            self._queue.append(request)
            lead = not self._forming
            self._forming = True
            self._cond.notify_all()  # a leader waiting for a full batch re-checks
        return lead

    def submit(self, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta], settings: GenerationSettings) -> str:
        """Queue one request and block until its reply is ready."""
        request = BatchRequest(input_ids, tuple(deltas), settings)
        if self._enqueue(request):
            self._lead()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.reply is not None
        return request.reply

    def stream(self, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta],
               settings: GenerationSettings) -> Iterator[str]:
        """Queue one request now and return an iterator over its reply's pieces as the batch decodes them.

        The batch's error, if any, is raised by the iterator after the pieces that came before it."""
        request = BatchRequest(input_ids, tuple(deltas), settings, pieces=queue.SimpleQueue())
        if self._enqueue(request):
            self._start_leader()
        return self._pieces(request)

    def _start_leader(self) -> None:
        """Lead the next batch on a short-lived thread (counted from now, so :meth:`wait_idle` sees it)."""
        with self._cond:
            self._leading += 1
        threading.Thread(target=self._lead, kwargs={"counted": True}, name="pllm-batch-leader", daemon=True).start()

    @staticmethod
    def _pieces(request: BatchRequest) -> Iterator[str]:
        assert request.pieces is not None
        while (item := request.pieces.get()) is not _END:
            yield item  # type: ignore[misc]
        if request.error is not None:
            raise request.error

    def _lead(self, counted: bool = False) -> None:
        if not counted:
            with self._cond:
                self._leading += 1
        try:
            self._lead_batch()
        finally:
            with self._cond:
                self._leading -= 1
                self._cond.notify_all()

    def _lead_batch(self) -> None:
        deadline = time.monotonic() + self.window_s
        with self._cond:
            while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        # The batch is taken when the decoder is free, not when the window ends: requests that arrive while
        # another batch runs wait with this leader and join its batch (they do not each lead a batch of one).
        with self._running:
            with self._cond:
                taken, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                overflow = self._forming = bool(self._queue)
            if overflow:  # more than one batch was queued: the rest gets its own leader
                self._start_leader()
            groups: dict[GenerationSettings, list[BatchRequest]] = {}
            for request in taken:
                groups.setdefault(request.settings, []).append(request)
            for settings, group in groups.items():
                self._serve(settings, group)

    def _serve(self, settings: GenerationSettings, group: list[BatchRequest]) -> None:
        def on_piece(row: int, text: str) -> None:
            sink = group[row].pieces
            if sink is not None:
                sink.put(text)

        def on_done(row: int, reply: str) -> None:
            request = group[row]
            request.reply = reply
            self._finish(request)

        def admit(active: int) -> list[tuple[torch.Tensor, tuple[LowRankDelta, ...]]]:
            """Requests queued since the batch started, with its settings, join it (up to max_batch rows)."""
            free = self.max_batch - active
            if free <= 0 or not self._queue:  # an unlocked peek: a request missed now is seen at the next step
                return []
            with self._cond:
                taken = [r for r in self._queue if r.settings == settings and (r.ahead is None or r.ahead.done())]
                failed = [r for r in taken if r.ahead is not None and r.ahead.exception() is not None]
                taken = [r for r in taken if r.ahead is None or r.ahead.exception() is None][:free]
                chosen = {id(r) for r in taken + failed}
                self._queue = [r for r in self._queue if id(r) not in chosen]
            for request in failed:  # its own prefill failed (a bad delta, say): only it hears of it
                request.error = request.ahead.exception()  # type: ignore[union-attr]
                self._finish(request)
            group.extend(taken)  # row i of the decode loop is group[i]
            self.joined += len(taken)
            return [(r.input_ids, r.deltas) if r.ahead is None else (r.input_ids, r.deltas, r.ahead.result())
                    for r in taken]

        try:
            replies = self.run_batch([r.input_ids for r in group], settings, [r.deltas for r in group],
                                     on_piece=on_piece, on_done=on_done, admit=admit if self.continuous else None)
            self.batch_sizes.append(len(group))
            for request, reply in zip(group, replies):
                if not request.done.is_set():
                    request.reply = reply
        except BaseException as err:  # every thread still waiting hears about it, not just the leader
            for request in group:
                if not request.done.is_set():
                    request.error = err
        finally:
            for request in group:
                if not request.done.is_set():
                    self._finish(request)

    @staticmethod
    def _finish(request: BatchRequest) -> None:
        """Wake ``request``'s caller: the end of its pieces, then ``done``."""
        if request.pieces is not None:
            request.pieces.put(_END)
        request.done.set()
