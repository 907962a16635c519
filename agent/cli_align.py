"""``pllm align``: the pole adapters of the objective level, once per base model.

* ``pllm align train [--dimension D]… [--force]`` — build preference pairs from the base model (context
  distillation) and train a DPO LoRA per pole, with a progress bar (steps, loss, ETA); poles already trained for
  the configured model are kept unless ``--force``;
* ``pllm align status`` — which poles exist for the configured model, their pairs and final DPO loss.

Users' preference layers are merged from these poles by their style weights (``pllm memory show`` prints the
weights) on the update worker; until the poles exist, style weights act at the input level only. After training,
``pllm align train`` queues a merge for every user of the home with style weights, so users whose weights were
set before the poles existed get their preference layer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agent.cli_common import PLLM_ERRORS, HomeOpt, ModelOpt, PllmTyper, VerboseOpt, console, fail, settings, setup

if TYPE_CHECKING:  # pragma: no cover
    from agent.settings import Settings

__all__ = ["align_app", "queue_preference_merges"]

align_app = PllmTyper(help="Pole adapters (DPO, one per style pole) that users' preference layers are merged from.")

DimensionOpt = Annotated[Optional[list[str]], typer.Option("--dimension", "-d", metavar="DIM",
                                                           help="verbosity, formality or expertise (repeatable; "
                                                                "default: all)")]


@align_app.command("train")
def align_train(dimension: DimensionOpt = None,
                force: Annotated[bool, typer.Option("--force", help="retrain poles that already exist")] = False,
                steps: Annotated[Optional[int], typer.Option(min=1, help="DPO steps per pole")] = None,
                prompts: Annotated[Optional[int], typer.Option(min=2, help="built-in prompts to use")] = None,
                max_new_tokens: Annotated[Optional[int], typer.Option(min=8, help="length of the model's answers "
                                                                      "the pairs are built from")] = None,
                home: HomeOpt = None, model: ModelOpt = None, verbose: VerboseOpt = 0) -> None:
    """Train the pole adapters of the configured base model (pairs from the model itself, then DPO per pole)."""
    setup(verbose)
    import dataclasses

    from agent.model_level import pole_store
    from editing import LocalModel
    from editing.alignment import PoleTrainConfig, all_poles, train_poles
    from memory.preferences import reply_scores
    from memory.relations import DIMENSIONS

    unknown = [d for d in dimension or () if d not in DIMENSIONS]
    if unknown:
        fail(ValueError(f"unknown dimension(s) {unknown}; choose from {sorted(DIMENSIONS)}"))
    s = settings(home, model=model)
    config = PoleTrainConfig()
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    if prompts is not None:
        config = dataclasses.replace(config, n_prompts=prompts)
    if max_new_tokens is not None:
        config = dataclasses.replace(config, max_new_tokens=max_new_tokens)
    try:
        with console.status("loading the model…"):
            local = LocalModel.load(s.runtime_config())
        store = pole_store(s)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, key: str, done: int, total: int, loss: float) -> None:
                name = f"{stage}:{key}"
                if name not in tasks:
                    label = f"pairs for {key}" if stage == "pairs" else f"DPO {key}"
                    tasks[name] = bar.add_task(escape(label), total=total, loss="")
                bar.update(tasks[name], completed=done, total=total,
                           loss="" if stage == "pairs" else f"loss {loss:.3f}")

            run = train_poles(local, store, reply_scores, poles=all_poles(tuple(dimension) if dimension else None),
                              config=config, force=force, progress=progress)
    except PLLM_ERRORS as exc:
        fail(exc)
    console.print(f"[green]done[/] for {escape(local.model_id)} in {run.seconds:.0f} s: {escape(run.summary())}")
    console.print(f"poles are in {escape(str(store.base_dir(local.model_id)))}")
    try:
        users = queue_preference_merges(s, "pllm align train: pole adapters (re)trained")
    except PLLM_ERRORS as exc:
        fail(exc)
    if users:
        console.print(f"queued a preference merge for {len(users)} user(s) with style weights "
                      f"({escape(', '.join(users[:5]))}{'…' if len(users) > 5 else ''}): the update worker of "
                      "`pllm serve` / `pllm chat` runs them, or `pllm worker --once` now")


def queue_preference_merges(s: "Settings", reason: str) -> list[str]:
    """Queue a ``preference_weights`` job for every user of the home with a non-zero style weight (their merged
    preference layer is re-made from the poles now trained; a user whose poles did not change publishes nothing).
    Returns those users; none when the home has no memory yet."""
    from datetime import datetime, timezone

    from agent.jobs import JobStore
    from memory.service import Memory

    config = s.memory_config()
    if not config.sqlite_path.exists():
        return []
    with Memory(config, read_only=True) as memory:
        users = [u for u in memory.users()
                 if any(abs(w.weight) > 1e-6 for w in memory.preference_weights(u).values())]
    if users:
        jobs = JobStore.under(s.home)
        try:
            now = datetime.now(timezone.utc)
            for user in users:
                jobs.add("preference_weights", user, [reason], now, coalesce=True)
        finally:
            jobs.close()
    return users


@align_app.command("status")
def align_status(as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
                 home: HomeOpt = None, model: ModelOpt = None, verbose: VerboseOpt = 0) -> None:
    """Which pole adapters exist for the configured base model."""
    setup(verbose)
    from agent.model_level import pole_store
    from editing.alignment import all_poles
    from editing.runtime import model_id_for

    s = settings(home, model=model)
    try:
        model_id = model_id_for(s.runtime_config())
        store = pole_store(s)
        rows = [(p, store.meta(model_id, p)) for p in all_poles()]
    except PLLM_ERRORS as exc:
        fail(exc)
    if as_json:
        console.print_json(json.dumps({"model": model_id, "poles": {
            p.key: ({"trained": True, "created_at": m["created_at"], "pllm_version": m["pllm_version"],
                     "n_pairs": m["extra"].get("n_pairs"), "losses": m["extra"].get("losses")} if m else
                    {"trained": False}) for p, m in rows}}))
        return
    table = Table(title=f"pole adapters of {escape(model_id)}")
    for col in ("pole", "trained", "pairs", "final DPO loss", "created"):
        table.add_column(col)
    for pole, meta in rows:
        extra = meta["extra"] if meta else {}
        losses = extra.get("losses") or []
        table.add_row(pole.key, "[green]yes[/]" if meta else "[yellow]no[/]", str(extra.get("n_pairs", "")),
                      f"{losses[-1]:.3f}" if losses else "", meta["created_at"][:19] if meta else "")
    console.print(table)
    if not any(meta for _, meta in rows):
        console.print("no poles yet: style weights act at the input level only until `pllm align train` has run")
