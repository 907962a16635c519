"""``pllm jobs``, ``pllm edit`` and ``pllm worker``: the model level from the command line.

* ``pllm jobs list [--user NAME]`` — the durable model-update jobs (state, attempts, detail, error);
* ``pllm edit list --user NAME`` — the user's knowledge edits (state, target, check metrics);
* ``pllm edit undo --user NAME EDIT_ID`` — remove one edit, publish the adapter without it;
* ``pllm edit apply --user NAME`` — reconcile the user's edits with their facts now, in the foreground;
* ``pllm worker [--once]`` — a process that runs the home's model-update jobs (its own model), so a chat
  started with ``PLLM_MODEL_UPDATES=0`` never computes an edit itself; ``--ray ADDRESS`` runs them on a Ray
  actor instead (:mod:`agent.ray_jobs`), this process keeping the job table.

Each reads the memory read-only, so it works beside a running chat.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli_common import (
    PLLM_ERRORS,
    HomeOpt,
    PllmTyper,
    ModelOpt,
    UserOpt,
    VerboseOpt,
    console,
    fail,
    settings,
    setup,
)
from agent.ray_jobs import RAY_ADDRESS_HELP

if TYPE_CHECKING:  # pragma: no cover
    from agent.policy import UpdateWorker
    from agent.settings import Settings

__all__ = ["jobs_app", "edit_app", "worker"]

jobs_app = PllmTyper(help="Model-update jobs (knowledge edits) of this home.")
edit_app = PllmTyper(help="A user's knowledge edits (their adapter).")
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document instead of a table")]


@jobs_app.command("list")
def jobs_list(user: Annotated[Optional[str], typer.Option("--user", "-u", metavar="NAME", help="only this user")] = None,
              limit: Annotated[int, typer.Option(min=1, help="newest N")] = 50, as_json: JsonOpt = False,
              home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """The model-update jobs, newest first."""
    setup(verbose)
    from agent.jobs import JobStore

    try:
        records = JobStore.under(settings(home).home).list(user, limit=limit)
    except PLLM_ERRORS as exc:
        fail(exc)
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in records]))
        return
    table = Table(title=f"jobs{' of ' + user if user else ''}")
    for col in ("id", "kind", "user", "state", "attempts", "updated", "detail / error"):
        table.add_column(col)
    for r in records:
        table.add_row(str(r.id), r.kind, escape(r.user_id), r.state, str(r.attempts),
                      r.updated_at.strftime("%Y-%m-%d %H:%M:%S"), escape(r.error if r.state == "failed" else r.detail))
    console.print(table)


@edit_app.command("list")
def edit_list(user: UserOpt, as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """The user's knowledge edits, oldest first, with the published adapter version."""
    setup(verbose)
    from agent.model_level import adapter_store, edit_registry

    s = settings(home)
    registry = edit_registry(s.home)
    try:
        records = registry.list(user)
    finally:
        registry.close()
    versions = adapter_store(s.home).versions(user)
    published = next((v.version for v in versions if v.published), None)
    if as_json:
        console.print_json(json.dumps({"user": user, "published_version": published,
                                       "edits": [r.as_dict() for r in records]}))
        return
    table = Table(title=f"knowledge edits of {escape(user)} (published adapter: "
                        f"{'v' + str(published) if published else 'none'})")
    for col in ("id", "state", "relation", "target", "question", "chat efficacy", "locality", "s", "note"):
        table.add_column(col)
    for r in records:
        m = r.metrics
        table.add_row(r.id, r.state, r.relation, escape(r.target), escape(r.question),
                      f"{m['chat_efficacy']:.2f}" if "chat_efficacy" in m else "",
                      f"{m['locality']:.2f}" if "locality" in m else "",
                      f"{m['seconds']:.1f}" if "seconds" in m else "", escape(r.note))
    console.print(table)


@contextmanager
def _model_worker(s: "Settings") -> Iterator["UpdateWorker"]:
    """A worker over the home's job store with the model-level handlers, on a freshly loaded model."""
    from agent.jobs import JobStore
    from agent.policy import UpdateWorker
    from agent.stack import register_model_handlers
    from editing import LocalModel
    from memory.service import Memory

    with console.status("loading the model and the memory…"):
        local = LocalModel.load(s.runtime_config())
        memory = Memory(s.memory_config(), read_only=True)
    jobs = JobStore.under(s.home)
    worker = UpdateWorker(store=jobs)
    try:
        register_model_handlers(worker, local, memory, s)
        # Set after registering: with the outbox set, registering knowledge_edit starts the worker's thread,
        # which would run jobs beside run_pending (their outcomes never shown, a job cut off on exit).
        worker.outbox = memory.graph.log_after
        yield worker
    finally:
        worker.close()
        jobs.close()
        memory.close()


def _run_pending(worker: "UpdateWorker") -> int:
    failed = 0
    with console.status("running model-update jobs…") as status:
        def show(record: object) -> None:
            status.update(f"job {record.id}: {record.kind} for {escape(record.user_id)} "  # type: ignore[attr-defined]
                          f"(attempt {record.attempts})…")  # type: ignore[attr-defined]

        for outcome in worker.run_pending(on_job=show):
            style = {"done": "green", "failed": "red", "skipped": "yellow"}[outcome.status]
            console.print(f"[{style}]{outcome.status}[/] job {outcome.job.id} {outcome.job.kind} for "
                          f"{escape(outcome.job.user_id)}: {escape(outcome.detail)}")
            failed += outcome.status == "failed"
    return failed


@edit_app.command("apply")
def edit_apply(user: UserOpt, home: HomeOpt = None, model: ModelOpt = None, verbose: VerboseOpt = 0) -> None:
    """Reconcile the user's edits with their current facts now (foreground), and publish their adapter."""
    setup(verbose)
    from datetime import datetime, timezone

    s = settings(home, model=model)
    try:
        with _model_worker(s) as w:
            assert w.store is not None
            w.store.add("knowledge_edit", user, [f"pllm edit apply --user {user}"], datetime.now(timezone.utc),
                        coalesce=True)
            failed = _run_pending(w)
    except PLLM_ERRORS as exc:
        fail(exc)
    if failed:
        raise typer.Exit(1)


@edit_app.command("undo")
def edit_undo(user: UserOpt, edit_id: Annotated[str, typer.Argument(metavar="EDIT_ID", help="from `pllm edit list`")],
              home: HomeOpt = None, model: ModelOpt = None, verbose: VerboseOpt = 0) -> None:
    """Remove one edit and publish the user's adapter without it (the fact itself stays in memory)."""
    setup(verbose)
    from agent.model_level import open_editor
    from editing import LocalModel

    s = settings(home, model=model)
    editor = None
    try:
        editor = open_editor(LocalModel.load(s.runtime_config()), s, private=False)  # keeps the style layer
        version = editor.undo(user, edit_id)
    except PLLM_ERRORS as exc:
        fail(exc)
    finally:
        if editor is not None:
            editor.registry.close()
    console.print(f"undid {escape(edit_id)} of {escape(user)}: published adapter v{version}")


@contextmanager
def _ray_worker(s: "Settings", address: str, *, verbose: bool = False) -> Iterator["UpdateWorker"]:
    """A worker over the home's job store whose model-level handlers send each job to a Ray actor (which loads
    the model itself); this process keeps the job store, the fact-log outbox, retries and outcomes."""
    from agent.jobs import JobStore
    from agent.policy import UpdateWorker
    from agent.ray_jobs import RayJobs, RayUnavailable, connect, shutdown
    from memory.service import Memory

    with console.status(f"connecting to Ray ({escape(address)})…"):
        started = connect(address, verbose=verbose)
    memory = jobs = remote = w = None
    try:
        memory = Memory(s.memory_config(), read_only=True)
        with console.status("starting the model-update actor (it loads the model)…"):
            try:
                remote = RayJobs(s)
            except PLLM_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever stopped the actor, said in one line
                raise RayUnavailable(f"the model-update actor could not start on Ray ({address}): "
                                     f"{type(exc).__name__}: {exc}") from exc
        assert remote.placement is not None
        console.print(f"model-update jobs run on Ray: {escape(remote.placement.describe())}")
        jobs = JobStore.under(s.home)
        w = UpdateWorker(store=jobs)
        remote.register(w)
        w.outbox = memory.graph.log_after  # set after registering: no background thread, run_pending runs all
        yield w
    finally:
        if w is not None:
            w.close()
        if remote is not None:
            remote.close()
        if jobs is not None:
            jobs.close()
        if memory is not None:
            memory.close()
        if started:
            shutdown()


def worker(once: Annotated[bool, typer.Option("--once", help="run what is due, then exit")] = False,
           poll: Annotated[float, typer.Option(min=0.1, help="seconds between looks at the fact log")] = 2.0,
           ray: Annotated[Optional[str], typer.Option(
               "--ray", metavar="ADDRESS", show_default="off: jobs run in this process",
               help=f"run the jobs on a Ray actor (its own model, one GPU when the cluster has one; the home must "
                    f"be on storage the actor's node shares). ADDRESS: {RAY_ADDRESS_HELP}. Needs Ray: install pllm "
                    "with its 'ray' extra")] = None,
           home: HomeOpt = None, model: ModelOpt = None, verbose: VerboseOpt = 0) -> None:
    """Run the home's model-update jobs in this process (its own model), or on a Ray actor (--ray), until
    interrupted. The job table under the home stays the record either way."""
    setup(verbose)
    s = settings(home, model=model)
    try:
        with (_ray_worker(s, ray, verbose=verbose > 0) if ray else _model_worker(s)) as w:
            while True:
                failed = _run_pending(w)
                if once:
                    raise typer.Exit(1 if failed else 0)
                time.sleep(poll)
    except KeyboardInterrupt:
        console.print("[yellow]worker stopped[/]")
    except PLLM_ERRORS as exc:
        fail(exc)
