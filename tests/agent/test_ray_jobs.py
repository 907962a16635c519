"""Model-update jobs on a real local Ray instance (``pllm worker --ray``): the job table under the home stays the
record, the jobs run in a Ray actor's own process on its own copy of the model, their effect lands in the home.

One private Ray instance on loopback for the module (one CPU: one actor at a time, so every test closes its actor).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from agent.jobs import JobStore
from agent.policy import UpdateWorker
from agent.settings import Settings
from memory import Memory, MemoryConfig

if TYPE_CHECKING:
    from agent.ray_jobs import RayJobs

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def ray_local():  # -> the ray module, connected to a private local instance
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'pllm[ray]')")
    from agent.ray_jobs import RayUnavailable, connect, shutdown

    if ray.is_initialized():
        pytest.skip("another Ray connection is open in this process")
    try:
        connect("local", num_cpus=1)
    except RayUnavailable as exc:
        pytest.skip(f"a local Ray instance cannot start here: {exc}")
    yield ray
    shutdown()


def _home(tmp_path: Path, embedder, turns: dict[str, list[str]]) -> Path:
    """A pllm home where each user said their turns (the memory is closed again: another process writes it)."""
    home = tmp_path / "home"
    memory = Memory(MemoryConfig(home=home), embedder=embedder)
    try:
        for user, texts in turns.items():
            for text in texts:
                memory.remember(user, text)
    finally:
        memory.close()
    return home


def _settings(home: Path, cache: Path) -> Settings:
    return Settings(home=home, model_cache=cache, model_updates=True, adapter_refresh_every=0, style_watch=False)


@contextmanager
def _ray_worker(home: Path, cache: Path, **kwargs) -> Iterator[tuple[UpdateWorker, "RayJobs"]]:
    """What `pllm worker --ray` keeps in the pllm process: the home's job store, the proxies of the actor and the
    fact-log outbox (set last: the jobs run in the calling thread, run_pending). The actor is stopped at the end
    (the module's Ray has one CPU: one actor at a time)."""
    from agent.ray_jobs import RayJobs

    remote = RayJobs(_settings(home, cache))
    memory = worker = None
    try:
        memory = Memory(MemoryConfig(home=home), read_only=True)
        worker = UpdateWorker(store=JobStore.under(home), **kwargs)
        remote.register(worker)
        worker.outbox = memory.graph.log_after
        yield worker, remote
    finally:
        if worker is not None:
            worker.close()
            worker.store.close()  # type: ignore[union-attr]
        remote.close()
        if memory is not None:
            memory.close()


def test_no_ray_or_an_unreachable_address_is_a_clear_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.cli import app

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'pllm[ray]')")
    if ray.is_initialized():  # the command would join that connection instead of trying the address
        pytest.skip("a Ray connection is already open in this process")
    env = {"COLUMNS": "300"}
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["worker", "--ray", "127.0.0.1:1", "--once"], env=env)
    assert result.exit_code == 2, result.output
    assert "could not reach Ray at '127.0.0.1:1': nothing answers at" in result.output
    assert "'local'" in result.output and "ray://HOST:10001" in result.output  # what ADDRESS can be
    assert time.monotonic() - t0 < 30  # not Ray's own minutes of retries
    assert not ray.is_initialized()

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(app, ["worker", "--ray", "local", "--once"], env=env)
    assert result.exit_code == 2, result.output
    assert "Ray is not installed" in result.output and "pip install 'pllm[ray]'" in result.output


@pytest.mark.slow  # one real knowledge edit (about 35 s on 2 CPU cores, one torch thread in the actor)
def test_a_stated_fact_is_edited_into_the_users_adapter_by_the_ray_actor_in_another_process(
        tmp_path: Path, ray_local, model_cache_dir: Path, embedder) -> None:
    from agent.model_level import adapter_store, edit_registry
    home = _home(tmp_path, embedder, {"ann": ["I live in Oslo."]})
    with _ray_worker(home, model_cache_dir) as (worker, remote):
        outcomes = worker.run_pending()  # the outbox turns ann's fact into a knowledge_edit job; the actor runs it
    assert [(o.job.kind, o.job.user_id, o.status) for o in outcomes] == [("knowledge_edit", "ann", "done")], outcomes
    (record,) = JobStore.under(home).list("ann")  # the record of truth, read back on a new connection
    assert (record.kind, record.state, record.attempts) == ("knowledge_edit", "done", 1)
    assert record.detail == outcomes[0].detail and "1 edit(s) added, published adapter v1" in record.detail
    placement = remote.ran_on[record.id]
    assert placement.pid != os.getpid()  # it ran in the actor's process
    # its effect is in the home, read from this process: an active edit and a published adapter that carries it
    registry = edit_registry(home)
    try:
        edits = registry.list("ann")
    finally:
        registry.close()
    assert [(e.relation, e.target, e.state) for e in edits] == [("lives_in", "Oslo", "active")]
    published = [v for v in adapter_store(home).versions("ann") if v.published]
    assert [v.version for v in published] == [1]


def test_pllm_worker_ray_once_runs_a_preference_job_and_a_rejected_job_fails_at_once(
        tmp_path: Path, ray_local, model_cache_dir: Path, embedder) -> None:
    from agent.cli import app
    from agent.model_level import adapter_store

    home = _home(tmp_path, embedder, {"sam": ["Please keep your answers short."]})
    jobs = JobStore.under(home)
    pref = jobs.add("preference_weights", "sam", ["verbosity → concise"], T0)
    nobody = jobs.add("adapter_refresh", "nobody", ["refresh requested"], T0)  # a user with no turns: rejected
    env = {"PLLM_HOME": str(home), "PLLM_MODEL_CACHE": str(model_cache_dir), "PLLM_ADAPTER_REFRESH_EVERY": "0",
           "PLLM_STYLE_WATCH": "0", "COLUMNS": "200"}
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["worker", "--ray", "local", "--once"], env=env)
    assert result.exit_code == 1, result.output  # one job failed
    actor_pid = re.search(r"model-update jobs run on Ray: \S+ pid (\d+) on ", result.output)
    assert actor_pid and int(actor_pid.group(1)) != os.getpid(), result.output
    assert ray_local.is_initialized()  # the command joined this process's Ray and left it running
    assert time.monotonic() - t0 < 120

    done = jobs.get(pref)
    assert done is not None and (done.state, done.attempts) == ("done", 1), done
    assert "style weights verbosity -1.00" in done.detail
    info = next(v for v in adapter_store(home).versions("sam") if v.published)  # visible here, written there
    # The concise pole exists only where `pllm align train` ran on this model cache (a fresh CI cache has none):
    # then it is merged; otherwise the job says so and the layer records the missing pole.
    if (model_cache_dir / "poles").is_dir() and any((model_cache_dir / "poles").glob("*/verbosity.concise")):
        assert "preference layer verbosity.concise × 1.00" in done.detail
        assert info.extra["preference"]["merged"] == ["verbosity.concise"]
    else:
        assert "not trained for this base model: verbosity.concise" in done.detail
        assert info.extra["preference"]["missing_poles"] == ["verbosity.concise"]

    failed = jobs.get(nobody)
    assert failed is not None and (failed.state, failed.attempts) == ("failed", 1), failed  # no retry
    assert failed.error == "JobRejected: 'nobody' has no turns or facts to train on"  # the handler's own message
    assert f"failed job {nobody} adapter_refresh for nobody" in result.output
    jobs.close()


def test_an_actor_that_dies_fails_the_job_clearly_and_the_retry_runs_on_a_fresh_actor(
        tmp_path: Path, ray_local, model_cache_dir: Path, embedder) -> None:
    home = _home(tmp_path, embedder, {"kim": ["Hello there."]})
    with _ray_worker(home, model_cache_dir, backoff_s=0.2) as (worker, remote):
        first = remote.placement
        assert first is not None and first.pid != os.getpid()
        ray_local.kill(remote.actor, no_restart=True)  # the node lost it (OOM killer, preemption, …)
        job_id = worker.store.add("preference_weights", "kim", ["weights changed"], T0)  # type: ignore[union-attr]
        assert job_id not in [o.job.id for o in worker.run_pending()]  # not finished: put back for a retry
        record = worker.store.get(job_id)  # type: ignore[union-attr]
        assert (record.state, record.attempts) == ("queued", 1), record
        assert record.error.startswith("ActorGone: the model-update actor died before finishing"), record.error
        assert "retried on a fresh actor" in record.error
        time.sleep(0.3)
        (outcome,) = [o for o in worker.run_pending() if o.job.id == job_id]
        assert outcome.status == "done", outcome
        assert worker.store.get(job_id).attempts == 2  # type: ignore[union-attr]
        assert remote.ran_on[job_id].pid not in (first.pid, os.getpid())
