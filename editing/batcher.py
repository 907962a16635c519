"""Concurrent ``generate`` calls gathered for a short window and served as one batch.

Leader/follower, no background thread: the first request to arrive when no batch is forming becomes
the leader. It waits ``window_s`` (or until ``max_batch`` requests are queued), takes everything queued,
runs it through ``run_batch`` (one decode loop per group of equal settings) and hands each waiting
thread its own reply. Requests arriving while a batch runs start the next one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from editing.errors import InvalidRequest
from editing.generation import GenerationSettings
from editing.requests import LowRankDelta

__all__ = ["BatchRequest", "RequestBatcher"]

RunBatch = Callable[[Sequence[torch.Tensor], GenerationSettings, Sequence[Sequence[LowRankDelta]]], list[str]]


@dataclass
class BatchRequest:
    """One queued request and, once served, its reply (or the error its batch raised)."""

    input_ids: torch.Tensor  # (1, T)
    deltas: tuple[LowRankDelta, ...]
    settings: GenerationSettings
    done: threading.Event = field(default_factory=threading.Event)
    reply: str | None = None
    error: BaseException | None = None


class RequestBatcher:
    """Serve concurrent requests in batches through ``run_batch(prompts, settings, deltas_per_row)``."""

    def __init__(self, run_batch: RunBatch, *, window_s: float, max_batch: int = 8) -> None:
        if window_s <= 0 or max_batch < 2:
            raise InvalidRequest(f"a batcher needs window_s > 0 and max_batch >= 2, got {window_s}, {max_batch}")
        self.run_batch = run_batch
        self.window_s = window_s
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[BatchRequest] = []
        self._forming = False  # a leader is waiting out its window
        self.batch_sizes: list[int] = []  # size of every batch run, for logs and tests

    def submit(self, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta], settings: GenerationSettings) -> str:
        """Queue one request and block until its reply is ready."""
        request = BatchRequest(input_ids, tuple(deltas), settings)
        with self._cond:
            self._queue.append(request)
            lead = not self._forming
            self._forming = True
            self._cond.notify_all()  # a leader waiting for a full batch re-checks
        if lead:
            self._lead()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.reply is not None
        return request.reply

    def _lead(self) -> None:
        deadline = time.monotonic() + self.window_s
        with self._cond:
            while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            taken, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            overflow = self._forming = bool(self._queue)
        if overflow:  # more than one batch was queued: the rest gets its own leader
            threading.Thread(target=self._lead, daemon=True).start()
        groups: dict[GenerationSettings, list[BatchRequest]] = {}
        for request in taken:
            groups.setdefault(request.settings, []).append(request)
        for settings, group in groups.items():
            self._serve(settings, group)

    def _serve(self, settings: GenerationSettings, group: list[BatchRequest]) -> None:
        try:
            replies = self.run_batch([r.input_ids for r in group], settings, [r.deltas for r in group])
            self.batch_sizes.append(len(group))
            for request, reply in zip(group, replies):
                request.reply = reply
        except BaseException as err:  # every waiting thread hears about it, not just the leader
            for request in group:
                request.error = err
        finally:
            for request in group:
                request.done.set()
