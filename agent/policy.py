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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from memory import ChangeEvent, FactAdded, FactRetracted, FactSuperseded, PreferenceDrift, StyleDrift
from memory.clock import Clock, SystemClock
from editing.compute import run_in_fresh_thread

if TYPE_CHECKING:  # pragma: no cover
    from agent.jobs import JobRecord, JobStore

__all__ = ["Job", "JobOutcome", "JobKind", "Handler", "JobRejected", "UpdatePolicy", "DefaultPolicy", "UpdateWorker"]

log = logging.getLogger(__name__)

JobKind = Literal["knowledge_edit", "preference_weights", "adapter_refresh"]


@dataclass(frozen=True)
class Job:
    """A model-update job as a handler sees it.

    ``events`` are the turn's change events when the job was planned in this process; a job read back from
    the durable store (the outbox, a restart) carries only their ``summary``. Handlers therefore work from
    the user's current state (they reconcile), never from the events alone, which also makes a redo safe.
    """

    kind: JobKind
    user_id: str
    events: tuple[ChangeEvent, ...]
    created_at: datetime
    id: int = 0  # the durable store's id (0: not stored yet)
    summary: tuple[str, ...] = ()
    attempt: int = 0

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
    """``FactAdded``/``FactSuperseded``/``FactRetracted`` → knowledge edit; ``PreferenceDrift`` → preference weights;
    ``StyleDrift`` → adapter refresh. One job per kind per turn."""

    def plan(self, user_id: str, events: Sequence[ChangeEvent], now: datetime) -> list[Job]:
        by_kind: dict[JobKind, list[ChangeEvent]] = {}
        for ev in events:
            if isinstance(ev, (FactAdded, FactSuperseded, FactRetracted)):
                by_kind.setdefault("knowledge_edit", []).append(ev)
            elif isinstance(ev, PreferenceDrift):
                by_kind.setdefault("preference_weights", []).append(ev)
            elif isinstance(ev, StyleDrift):
                by_kind.setdefault("adapter_refresh", []).append(ev)
        return [Job(kind, user_id, tuple(evs), now) for kind, evs in by_kind.items()]


Handler = Callable[[Job], str]  # returns a one-line detail; raises on failure


class JobRejected(Exception):
    """A handler ran and refused its own result (e.g. an edit that failed its check): failed at once, no retry."""


# One row of the memory's fact log as the outbox reads it: (seq, user id, one-line description).
LogRows = Callable[[int], Sequence[tuple[int, str, str]]]


@dataclass
class UpdateWorker:
    """Runs model-update jobs on one background thread, durably.

    Jobs are written to ``store`` (a :class:`~agent.jobs.JobStore`; an in-memory one by default, the home's
    ``jobs.sqlite`` in a stack) before :meth:`submit` returns, and run in id order. A kind with no handler
    is recorded as skipped. A handler's exception is retried with exponential backoff (``backoff_s``, then
    twice that, …) up to ``max_attempts`` attempts, then the job is failed with its error; it never blocks
    the jobs behind it. :class:`JobRejected` fails a job at once.

    ``outbox``: a function returning the memory's fact-log rows after a seq. While a ``knowledge_edit``
    handler is registered, the worker turns new rows into knowledge-edit jobs (one per user, coalesced
    with a queued one) and advances its cursor in the same transaction, so a crash between ``remember``
    and the job loses nothing. Jobs left running by a dead worker are requeued when a worker starts.
    """

    clock: Clock = field(default_factory=SystemClock)
    handlers: dict[str, Handler] = field(default_factory=dict)
    outcomes: list[JobOutcome] = field(default_factory=list)
    store: "JobStore | None" = None
    outbox: LogRows | None = None
    max_attempts: int = 3
    backoff_s: float = 1.0
    poll_s: float = 0.5
    watchers: list[Callable[[str, str, datetime], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from agent.jobs import JobStore

        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        self.store = self.store or JobStore()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = threading.Event()  # set while the thread runs a job or drains the outbox
        self._recovered = False

    def register(self, kind: JobKind, handler: Handler) -> None:
        """Run ``kind`` jobs with ``handler``. A handler that also watches turns (it has ``observe(user_id,
        text, at)``) is given every user turn by :meth:`observe`; one with ``attach(worker)`` is handed this worker
        (so it can submit jobs of its own)."""
        self.handlers[kind] = handler
        attach = getattr(handler, "attach", None)
        if callable(attach):
            attach(self)
        observe = getattr(handler, "observe", None)
        if callable(observe):
            self.watchers.append(observe)
        if kind == "knowledge_edit" and self.outbox is not None:
            self.poke()

    def observe(self, user_id: str, text: str, at: datetime) -> None:
        """Hand one user turn (said at ``at``, the turn's time) to every watcher; they must not block (they queue
        the work) and must not read the clock (a scenario's manual clock moves only when its runner says)."""
        for watch in self.watchers:
            try:
                watch(user_id, text, at)
            except Exception:  # noqa: BLE001 - a watcher's failure never breaks the turn
                log.exception("a turn watcher failed on %s's turn", user_id)

    # ------------------------------------------------------------------------------ feeding

    def submit(self, jobs: Sequence[Job]) -> list[int]:
        """Store ``jobs`` (a queued job of the same kind for the same user absorbs a new one) and wake the thread."""
        from agent.views import describe_event

        assert self.store is not None
        ids = [self.store.add(j.kind, j.user_id, j.summary or [describe_event(e, j.user_id) for e in j.events],
                              j.created_at, coalesce=True) for j in jobs]
        if jobs:
            self.poke()
        return ids

    def poke(self) -> None:
        """Start the thread if needed and wake it (new jobs or new fact-log rows)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="pllm-update-worker", daemon=True)
                self._thread.start()
        self._wake.set()

    def _drain_outbox(self) -> None:
        if self.outbox is None or "knowledge_edit" not in self.handlers:
            return
        assert self.store is not None
        rows = list(self.outbox(self.store.cursor()))
        if rows:
            self.store.consume(rows, "knowledge_edit", self.clock.now())

    # ------------------------------------------------------------------------------ running

    def _recover(self) -> None:
        if not self._recovered:
            assert self.store is not None
            self.store.requeue_interrupted(self.clock.now())
            self._recovered = True

    def run_pending(self, *, on_job: Callable[["JobRecord"], None] | None = None) -> list[JobOutcome]:
        """Run every due job in the calling thread (``pllm edit apply``, ``pllm worker``); returns their outcomes.

        Jobs waiting for a retry are left for later. Do not call it while the background thread runs.
        """
        self._recover()
        self._drain_outbox()
        done: list[JobOutcome] = []
        assert self.store is not None
        while (record := self.store.claim(self.clock.now())) is not None:
            if on_job is not None:
                on_job(record)
            outcome = self._execute(record)
            if outcome is not None:
                done.append(outcome)
        return done

    def _run(self) -> None:
        assert self.store is not None
        while not self._stop.is_set():
            self._busy.set()
            try:
                self._recover()
                self._drain_outbox()
                record = self.store.claim(self.clock.now())
                if record is not None:
                    self._execute(record)
                    continue
            except Exception:  # noqa: BLE001 - the store failed (disk, lock); try again on the next wake
                log.exception("the update worker could not read its jobs; retrying in %.1f s", self.poll_s)
            finally:
                self._busy.clear()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _execute(self, record: "JobRecord") -> JobOutcome | None:
        """Run one claimed job; None when it was put back for a retry."""
        assert self.store is not None
        job = Job(record.kind, record.user_id, (), record.created_at, id=record.id, summary=record.summary,  # type: ignore[arg-type]
                  attempt=record.attempts)
        handler = self.handlers.get(job.kind)
        if handler is None:
            return self._finish(job, "skipped", f"no handler registered for {job.kind}")
        try:
            # A fresh thread per job: training leaves an OpenMP pool behind on the thread that ran it, and a second
            # live pool slows every decode step (editing.compute); this one ends with the job.
            detail = run_in_fresh_thread(handler, job, name=f"pllm-job-{job.id}")
            return self._finish(job, "done", detail)
        except JobRejected as exc:
            log.warning("job %d (%s for %s) rejected: %s", job.id, job.kind, job.user_id, exc)
            return self._finish(job, "failed", "", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a failed job leaves the user on the previous version
            error = f"{type(exc).__name__}: {exc}"
            if record.attempts < self.max_attempts:
                delay = self.backoff_s * 2 ** (record.attempts - 1)
                log.warning("job %d (%s for %s) failed on attempt %d/%d, retrying in %.1f s: %s", job.id, job.kind,
                            job.user_id, record.attempts, self.max_attempts, delay, error)
                self.store.retry_later(job.id, self.clock.now(), delay, error)
                return None
            log.exception("job %d (%s for %s) failed after %d attempts", job.id, job.kind, job.user_id, record.attempts)
            return self._finish(job, "failed", "", error)

    def _finish(self, job: Job, status: Literal["done", "failed", "skipped"], detail: str,
                error: str = "") -> JobOutcome:
        assert self.store is not None
        now = self.clock.now()
        self.store.finish(job.id, status, now, detail=detail, error=error)
        outcome = JobOutcome(job, status, detail or error, now)
        self.outcomes.append(outcome)
        return outcome

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running and the outbox is drained (False if ``timeout`` passed first)."""
        assert self.store is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._busy.is_set() and self.store.pending() == 0 and not self._outbox_behind():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.poke()  # also starts a thread for jobs left queued by an earlier process
            time.sleep(0.02)

    def _outbox_behind(self) -> bool:
        if self.outbox is None or "knowledge_edit" not in self.handlers:
            return False
        assert self.store is not None
        return bool(self.outbox(self.store.cursor()))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)
        for handler in self.handlers.values():
            close = getattr(handler, "close", None)
            if callable(close):
                close()
