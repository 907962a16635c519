"""From memory change events to model-update jobs, run in the background.

The ``adapt`` node never blocks the reply: it asks the :class:`UpdatePolicy` which jobs the turn's
change events call for and hands them to the :class:`UpdateWorker`, a background thread that runs
each job with the handler registered for its kind and publishes its outcome. A kind with no handler
is recorded as skipped, with the reason. Model-level handlers (knowledge edits, preference weights,
adapter refresh) are registered on the worker by :func:`agent.stack.build_stack` from
:data:`agent.stack.MODEL_HANDLERS`; :meth:`agent.PersonalAgent.capabilities` reports which kinds have one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from memory import ChangeEvent, FactRetracted, FactSuperseded, PreferenceDrift, StyleDrift
from memory.clock import Clock, SystemClock

__all__ = ["Job", "JobOutcome", "JobKind", "Handler", "UpdatePolicy", "DefaultPolicy", "UpdateWorker"]

log = logging.getLogger(__name__)

JobKind = Literal["knowledge_edit", "preference_weights", "adapter_refresh"]


@dataclass(frozen=True)
class Job:
    kind: JobKind
    user_id: str
    events: tuple[ChangeEvent, ...]
    created_at: datetime


@dataclass(frozen=True)
class JobOutcome:
    job: Job
    status: Literal["done", "failed", "skipped"]
    detail: str = ""
    finished_at: datetime | None = None


class UpdatePolicy(Protocol):
    """Decides which model-update jobs a turn's change events call for."""

    def plan(self, user_id: str, events: Sequence[ChangeEvent], now: datetime) -> list[Job]: ...


@dataclass
class DefaultPolicy:
    """``FactSuperseded``/``FactRetracted`` → knowledge edit; ``PreferenceDrift`` → preference weights;
    ``StyleDrift`` → adapter refresh. One job per kind per turn."""

    def plan(self, user_id: str, events: Sequence[ChangeEvent], now: datetime) -> list[Job]:
        by_kind: dict[JobKind, list[ChangeEvent]] = {}
        for ev in events:
            if isinstance(ev, (FactSuperseded, FactRetracted)):
                by_kind.setdefault("knowledge_edit", []).append(ev)
            elif isinstance(ev, PreferenceDrift):
                by_kind.setdefault("preference_weights", []).append(ev)
            elif isinstance(ev, StyleDrift):
                by_kind.setdefault("adapter_refresh", []).append(ev)
        return [Job(kind, user_id, tuple(evs), now) for kind, evs in by_kind.items()]


Handler = Callable[[Job], str]  # returns a one-line detail; raises on failure


@dataclass
class UpdateWorker:
    """One background thread that runs jobs in order; ``wait_idle`` returns when all submitted are done."""

    clock: Clock = field(default_factory=SystemClock)
    handlers: dict[str, Handler] = field(default_factory=dict)
    outcomes: list[JobOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def register(self, kind: JobKind, handler: Handler) -> None:
        self.handlers[kind] = handler

    def submit(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pllm-update-worker", daemon=True)
                self._thread.start()
        for job in jobs:
            self._queue.put(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has finished (never longer than the jobs take)."""
        if timeout is None:
            self._queue.join()
            return True
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self.outcomes.append(self._execute(job))
            finally:
                self._queue.task_done()

    def _execute(self, job: Job) -> JobOutcome:
        handler = self.handlers.get(job.kind)
        if handler is None:
            return JobOutcome(job, "skipped", f"no handler registered for {job.kind}", self.clock.now())
        try:
            return JobOutcome(job, "done", handler(job), self.clock.now())
        except Exception as exc:  # noqa: BLE001 - a failed job leaves the user on the previous version
            log.exception("job %s for %s failed", job.kind, job.user_id)
            return JobOutcome(job, "failed", f"{type(exc).__name__}: {exc}", self.clock.now())

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
