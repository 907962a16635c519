"""``pllm scenario run`` and ``pllm memory graph`` (wired into :mod:`agent.cli`).

Wiring, one line each::

    app.add_typer(scenario_app, name="scenario")
    memory_app.command("graph")(memory_graph)   # memory_app: the ``pllm memory`` sub-app

Exit codes of ``scenario run``: 0 all expectations passed, 1 any failed, 2 a file could not be read or
parsed (nothing is run then).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from agent.scenarios.runner import ScenarioResult

__all__ = ["scenario_app", "memory_graph", "results_table"]

scenario_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="Scripted lifelong-learning scenarios: run YAML lives against the real stack.")
console = Console()
err_console = Console(stderr=True)


@scenario_app.callback()
def _group() -> None:
    """Scripted lifelong-learning scenarios: run YAML lives against the real stack."""


def _setup(verbose: bool) -> None:
    """The CLI's process set-up (offline hub, logging), shared with the main ``pllm`` app."""
    from agent.cli import _setup as cli_setup  # lazy: agent.cli imports this module

    cli_setup(verbose)


def results_table(results: list["ScenarioResult"]) -> Table:
    """One row per expectation: scenario, session, expectation, pass/fail and what was found."""
    table = Table(title="scenario expectations", show_lines=False, expand=True)
    for name, kw in (("scenario", {"no_wrap": True}), ("s", {"justify": "right"}), ("expectation", {}),
                     ("result", {"no_wrap": True}), ("found", {"overflow": "fold"})):
        table.add_column(name, **kw)
    for r in results:
        for e in r.results:
            verdict = "[green]pass[/]" if e.passed else ("[yellow]not supported[/]" if e.unsupported else "[red]FAIL[/]")
            # Details hold brackets ("[superseded]") that rich would read as markup.
            table.add_row(escape(r.scenario.name), str(e.session_index + 1), escape(e.expectation.describe()), verdict,
                          escape(e.detail), style=None if e.passed else "bold")
    return table


def _summary(results: list["ScenarioResult"]) -> Table:
    table = Table(title="scenarios")
    for col in ("scenario", "passed", "sessions", "turns", "wall s"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        ok, n = r.counts
        mark = "green" if r.passed else "red"
        table.add_row(escape(r.scenario.name), f"[{mark}]{ok}/{n}[/]", str(len(r.scenario.sessions)), str(r.turn_count),
                      f"{r.wall_s:.1f}")
    return table


@scenario_app.command("run")
def run(
    paths: Annotated[list[Path], typer.Argument(help="scenario files or folders (searched for *.yaml with sessions:)")],
    report: Annotated[Optional[Path], typer.Option("--report", help="write a markdown report (+ timeline PNGs) here")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="model folder, .gguf file or cached hub id")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="reply length cap")] = 24,
    keep_homes: Annotated[Optional[Path], typer.Option("--keep-homes", help="keep each scenario's pllm home here")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress")] = False,
) -> None:
    """Run scenarios, each in a fresh pllm home; exit 1 if any expectation fails."""
    _setup(verbose)
    from agent.scenarios.format import ScenarioFormatError, load_scenario
    from agent.scenarios.runner import RunOptions, ScenarioRunner, scenario_files
    from agent.settings import Settings

    files = scenario_files(paths)
    missing = [p for p in paths if not p.exists()]
    if missing or not files:
        err_console.print(f"[red]error:[/] {'no such file or folder: ' + str(missing[0]) if missing else 'no scenario files found'}")
        raise typer.Exit(2)
    try:
        scenarios = [load_scenario(f) for f in files]
    except ScenarioFormatError as exc:
        err_console.print(f"[red]error:[/] {exc}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from exc
    settings = Settings(**({"model": model} if model else {}))
    runner = ScenarioRunner(settings=settings, options=RunOptions(max_new_tokens=max_new_tokens, keep_homes=keep_homes))
    results: list[ScenarioResult] = []
    for sc in scenarios:
        with console.status(f"running [bold]{sc.name}[/] ({len(sc.sessions)} sessions)…"):
            results.append(runner.run(sc))
        r = results[-1]
        ok, n = r.counts
        console.print(f"{'[green]✓' if r.passed else '[red]✗'}[/] {escape(sc.name)}: {ok}/{n} in {r.wall_s:.1f} s"
                      + (f" — [red]{escape(r.error)}[/]" if r.error else ""))
    console.print(results_table(results))
    console.print(_summary(results))
    if report is not None:
        from agent.scenarios.report import write_report

        console.print(f"report: {write_report(results, report)}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def memory_graph(
    user: Annotated[str, typer.Option("--user", "-u", help="whose graph")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write")],
    home: Annotated[Optional[Path], typer.Option("--home", help="pllm home (default: $PLLM_HOME or the user cache dir)")] = None,
) -> Path:
    """Draw the user's current knowledge graph to a PNG."""
    from agent.scenarios.graph_plot import draw_graph, user_graph
    from memory import PllmMemoryError

    try:
        graph = user_graph(home, user)
    except PllmMemoryError as exc:
        err_console.print(f"[red]error:[/] {exc}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from exc
    path = draw_graph(graph, user, out)
    console.print(f"drew {graph.number_of_edges()} facts of {user} to {path}")
    return path
