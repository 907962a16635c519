"""``pllm adapters``: a user's published adapter versions and their style layer, from the command line.

* ``pllm adapters list --user NAME`` — every version: what it holds (edits, style layer), the base model it was
  made for (stale when that is not the configured model), which one is published;
* ``pllm adapters refresh --user NAME`` — train the user's style adapter now, in the foreground, with a progress
  bar (steps, loss, ETA), and publish it with their edits;
* ``pllm adapters rollback --user NAME [--to N]`` — publish an earlier version again (default: the one before).
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agent.cli_common import PLLM_ERRORS, HomeOpt, ModelOpt, PllmTyper, UserOpt, VerboseOpt, console, fail, settings, setup

__all__ = ["adapters_app"]

adapters_app = PllmTyper(help="A user's published adapter versions (knowledge edits + style adapter).")


@adapters_app.command("list")
def adapters_list(user: UserOpt, as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
                  home: HomeOpt = None, model: ModelOpt = None, verbose: VerboseOpt = 0) -> None:
    """The user's adapter versions, oldest first; the published one is marked."""
    setup(verbose)
    import dataclasses

    from agent.model_level import adapter_store, style_store
    from editing.runtime import model_id_for

    s = settings(home, model=model)
    try:
        current = model_id_for(s.runtime_config())
        versions = adapter_store(s.home).versions(user)
        styles = {v.version: v for v in style_store(s.home).versions(user)}
    except PLLM_ERRORS as exc:
        fail(exc)
    if as_json:
        console.print_json(json.dumps({"user": user, "model": current, "versions": [
            {**dataclasses.asdict(v), "stale": v.base_model_id != current} for v in versions]}, default=str))
        return
    table = Table(title=f"adapters of {escape(user)} (model {escape(current)})")
    for col in ("version", "published", "edits", "style", "style trained on", "final loss", "base model", "created"):
        table.add_column(col)
    for v in versions:
        number = v.extra.get("style_version")
        style = styles.get(number) if isinstance(number, int) else None
        trained = f"{style.extra.get('n_examples', '?')} examples" if style else ""
        loss = style.extra.get("final_loss") if style else None
        base = escape(v.base_model_id) + (" [red](stale)[/]" if v.base_model_id != current else "")
        table.add_row(f"v{v.version}", "[green]●[/]" if v.published else "", str(len(v.extra.get("edits", []))),
                      f"v{number} ({style.kind})" if style else "", trained,
                      f"{loss:.3f}" if isinstance(loss, (int, float)) else "", base, v.created_at[:19])
    console.print(table)
    if not versions:
        console.print(f"{escape(user)} has no adapter yet: it appears after their first knowledge edit or "
                      "style refresh")


@adapters_app.command("refresh")
def adapters_refresh(user: UserOpt,
                     force: Annotated[bool, typer.Option("--force", help="train even with no new turns")] = False,
                     epochs: Annotated[Optional[int], typer.Option(min=1, help="passes over the data")] = None,
                     home: HomeOpt = None, model: ModelOpt = None, verbose: VerboseOpt = 0) -> None:
    """Train the user's style adapter on their history now (foreground) and publish it with their edits."""
    setup(verbose)
    import dataclasses

    from agent.adapter_level import AdapterRefresher
    from agent.model_level import ModelWorkspace
    from editing import LocalModel
    from editing.oppu import AdapterTrainConfig
    from memory.service import Memory

    s = settings(home, model=model)
    try:
        with console.status("loading the model and the memory…"):
            local = LocalModel.load(s.runtime_config())
            memory = Memory(s.memory_config(), read_only=True)
        config = AdapterTrainConfig() if epochs is None else dataclasses.replace(AdapterTrainConfig(), epochs=epochs)
        refresher = AdapterRefresher(ModelWorkspace(local, memory, s), config, refresh_every=0, watch_style=False,
                                     min_turns=1)
        columns = (TextColumn("[bold]training[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(escape(user), total=None, loss="–")

            def progress(step: int, total: int, loss: float) -> None:
                bar.update(task, completed=step, total=total, loss=f"{loss:.3f}")

            report = refresher.refresh(user, progress=progress, force=force)
        memory.close()
    except PLLM_ERRORS as exc:
        fail(exc)
    if report.style_version is None:
        console.print(f"[yellow]nothing trained[/]: {escape(report.reason)}")
        raise typer.Exit(1)
    console.print(f"[green]done[/]: {escape(report.summary())}")


@adapters_app.command("rollback")
def adapters_rollback(user: UserOpt,
                      to: Annotated[Optional[int], typer.Option("--to", min=1, metavar="N",
                                                                help="the version to publish (default: the one "
                                                                     "before the published one)")] = None,
                      home: HomeOpt = None, verbose: VerboseOpt = 0) -> None:
    """Publish an earlier adapter version again (its edits and style layer); the next turn runs with it."""
    setup(verbose)
    from agent.model_level import adapter_store

    s = settings(home)
    try:
        version = adapter_store(s.home).rollback(user, to)
    except PLLM_ERRORS as exc:
        fail(exc)
    console.print(f"{escape(user)} now runs with adapter v{version}")
