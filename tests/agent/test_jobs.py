"""The durable model-update worker: jobs in SQLite, retries with backoff, the fact-log outbox, crash recovery."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.jobs import JobStore
from agent.policy import Job, JobRejected, UpdateWorker
from memory import Memory, MemoryConfig
from memory.clock import ManualClock

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def _job(user: str, kind: str = "knowledge_edit") -> Job:
    return Job(kind, user, (), T0, summary=(f"+ something about {user}",))  # type: ignore[arg-type]


def test_jobs_are_stored_and_a_kind_without_handler_is_recorded_as_skipped(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    worker = UpdateWorker(store=store)
    worker.submit([_job("ann", "adapter_refresh")])
    assert worker.wait_idle(10)
    (record,) = JobStore(tmp_path / "jobs.sqlite").list("ann")  # another connection reads it back
    assert (record.kind, record.state, record.detail) == ("adapter_refresh", "skipped",
                                                          "no handler registered for adapter_refresh")
    assert record.summary == ("+ something about ann",)
    worker.close()


def test_a_failing_job_is_retried_with_backoff_then_failed_and_never_blocks_the_next(tmp_path: Path) -> None:
    calls: dict[str, int] = {}

    def handler(job: Job) -> str:
        calls[job.user_id] = calls.get(job.user_id, 0) + 1
        if job.user_id == "flaky" and calls["flaky"] < 3:
            raise OSError("disk hiccup")
        if job.user_id == "broken":
            raise RuntimeError("always broken")
        return f"ok on attempt {job.attempt}"

    worker = UpdateWorker(store=JobStore(tmp_path / "jobs.sqlite"), backoff_s=0.05, max_attempts=3)
    worker.register("knowledge_edit", handler)
    worker.submit([_job("broken"), _job("flaky"), _job("fine")])
    assert worker.wait_idle(30)
    states = {r.user_id: r for r in worker.store.list()}  # type: ignore[union-attr]
    assert (states["broken"].state, states["broken"].attempts) == ("failed", 3)
    assert states["broken"].error == "RuntimeError: always broken"
    assert (states["flaky"].state, states["flaky"].attempts, states["flaky"].detail) == ("done", 3, "ok on attempt 3")
    assert (states["fine"].state, states["fine"].attempts) == ("done", 1)
    worker.close()


def test_each_job_runs_on_a_thread_of_its_own_that_ends_with_it(tmp_path: Path) -> None:
    """Training leaves an OpenMP pool on the thread that ran it; a job thread takes its pool with it when it ends
    (a pool that outlives the job would slow every later decode step: editing.compute)."""
    import threading

    ran: list[threading.Thread] = []
    worker = UpdateWorker(store=JobStore(tmp_path / "jobs.sqlite"))
    worker.register("knowledge_edit", lambda job: ran.append(threading.current_thread()) or f"done for {job.user_id}")
    worker.submit([_job("ann"), _job("ben")])
    assert worker.wait_idle(10)
    assert len(ran) == 2 and ran[0] is not ran[1]
    assert all(t.name.startswith("pllm-job-") and not t.is_alive() for t in ran)
    assert {r.detail for r in worker.store.list()} == {"done for ann", "done for ben"}  # type: ignore[union-attr]
    worker.close()


def test_a_rejected_result_fails_at_once_without_retries(tmp_path: Path) -> None:
    def handler(job: Job) -> str:
        raise JobRejected("edit for lives_in did not pass its check (chat efficacy 0.00 < 0.50)")

    worker = UpdateWorker(store=JobStore(tmp_path / "jobs.sqlite"), backoff_s=0.05)
    worker.register("knowledge_edit", handler)
    worker.submit([_job("ann")])
    assert worker.wait_idle(10)
    (record,) = worker.store.list("ann")  # type: ignore[union-attr]
    assert (record.state, record.attempts) == ("failed", 1) and "did not pass its check" in record.error
    worker.close()


def test_the_outbox_turns_new_fact_log_rows_into_one_job_per_user_and_resumes_from_its_cursor(
        tmp_path: Path, embedder) -> None:
    clock = ManualClock(T0)
    memory = Memory(MemoryConfig(home=tmp_path / "home"), clock=clock, embedder=embedder)
    try:
        memory.remember("ann", "I live in Oslo.")
        memory.remember("bob", "I work as a nurse.")
        memory.remember("ann", "I moved to Bergen.")
        seen: list[tuple[str, tuple[str, ...]]] = []
        store = JobStore(tmp_path / "jobs.sqlite")
        worker = UpdateWorker(store=store, outbox=memory.graph.log_after)
        worker.register("knowledge_edit", lambda job: seen.append((job.user_id, job.summary)) or "reconciled")
        assert worker.wait_idle(20)
        assert sorted(u for u, _ in seen) == ["ann", "bob"]  # one job per user, not per row
        ann = dict(seen)["ann"]
        assert any("Oslo" in s for s in ann) and any("Bergen" in s for s in ann)
        worker.close()
        # A new worker on the same store starts from the cursor: nothing is redone.
        again = UpdateWorker(store=JobStore(tmp_path / "jobs.sqlite"), outbox=memory.graph.log_after)
        again.register("knowledge_edit", lambda job: seen.append((job.user_id, job.summary)) or "again")
        assert again.wait_idle(20) and len(seen) == 2
        memory.remember("bob", "I am a teacher now.")
        assert again.wait_idle(20) and [u for u, _ in seen[2:]] == ["bob"]
        again.close()
    finally:
        memory.close()


_CRASHING_WORKER = textwrap.dedent("""
    import os, sys
    from agent.jobs import JobStore
    from agent.policy import Job, UpdateWorker
    from datetime import datetime, timezone
    store = JobStore(sys.argv[1])
    worker = UpdateWorker(store=store)
    def handler(job):
        open(sys.argv[2], "a").write(f"started {job.id} attempt {job.attempt}\\n")
        os._exit(3)  # the process dies inside the job: no outcome is written
    worker.register("knowledge_edit", handler)
    worker.submit([Job("knowledge_edit", "ann", (), datetime.now(timezone.utc), summary=("+ lives in: Oslo",))])
    worker.wait_idle(60)
""")


def test_a_crash_inside_a_job_leaves_it_to_be_redone_by_the_next_worker(tmp_path: Path) -> None:
    db, marks = tmp_path / "jobs.sqlite", tmp_path / "marks.txt"
    proc = subprocess.run([sys.executable, "-c", _CRASHING_WORKER, str(db), str(marks)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert marks.read_text() == "started 1 attempt 1\n"
    (record,) = JobStore(db).list()
    assert record.state == "running"  # what the dead process left
    worker = UpdateWorker(store=JobStore(db))
    worker.register("knowledge_edit", lambda job: f"redone on attempt {job.attempt}")
    outcomes = worker.run_pending()
    assert [(o.status, o.detail) for o in outcomes] == [("done", "redone on attempt 2")]
    assert JobStore(db).get(1).state == "done"  # type: ignore[union-attr]


def test_bad_worker_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        UpdateWorker(max_attempts=0)
