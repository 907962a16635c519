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
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.cli_common import (
    MODEL_PANEL,
    DeviceOpt,
    HomeOpt,
    ModelOpt,
    PllmTyper,
    VerboseOpt,
    console,
    fail,
    settings,
    setup,
)

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from agent.scenarios.format import Scenario, Session
    from agent.scenarios.runner import ScenarioResult, ScenarioRunner

__all__ = ["scenario_app", "memory_graph", "results_table", "TurnProgress"]

scenario_app = PllmTyper(help="Scripted lifelong-learning scenarios: run YAML lives against the real stack.")


@scenario_app.callback()
def _group() -> None:
    """Scripted lifelong-learning scenarios: run YAML lives against the real stack."""


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


class TurnProgress:
    """A live display of turns done / total with the current scenario and session (on a terminal only;
    elsewhere it prints nothing, so logs and CI output hold only the results)."""

    def __init__(self, scenarios: list["Scenario"], console: "Console") -> None:
        self.total = sum(len(session.turns) for sc in scenarios for session in sc.sessions)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("turns"), TimeElapsedColumn(), console=console, transient=True,
                                 disable=not console.is_terminal)
        self._task = self.progress.add_task("loading the model…", total=self.total)
        self._done_in_scenario = 0

    def __enter__(self) -> "TurnProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, scenario: "Scenario") -> None:
        self._done_in_scenario = 0
        self.progress.update(self._task, description=self._where(scenario))

    def turn_done(self, scenario: "Scenario") -> None:
        self._done_in_scenario += 1
        self.progress.update(self._task, advance=1, description=self._where(scenario))

    def print(self, line: str) -> None:
        """A line above the live display."""
        self.progress.console.print(line)

    def _where(self, scenario: "Scenario") -> str:
        """``name · session i/n`` of the next turn to run (``checking`` once all turns ran)."""
        seen, n = 0, len(scenario.sessions)
        for session in scenario.sessions:
            seen += len(session.turns)
            if seen > self._done_in_scenario:
                return f"[bold]{escape(scenario.name)}[/] · session {session.index + 1}/{n}"
        return f"[bold]{escape(scenario.name)}[/] · checking"


def _run_all(runner: "ScenarioRunner", scenarios: list["Scenario"]) -> list["ScenarioResult"]:
    results: list[ScenarioResult] = []
    with TurnProgress(scenarios, console) as progress:
        for sc in scenarios:
            progress.start(sc)

            def on_turn(session: "Session", turn: object, sc: "Scenario" = sc) -> None:
                progress.turn_done(sc)

            r = runner.run(sc, on_turn=on_turn)
            results.append(r)
            ok, n = r.counts
            progress.print(f"{'[green]✓' if r.passed else '[red]✗'}[/] {escape(sc.name)}: {ok}/{n} in {r.wall_s:.1f} s"
                           + (f" — [red]{escape(r.error)}[/]" if r.error else ""))
    return results


@scenario_app.command("run")
def run(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...",
                                                help="scenario files or folders (searched for *.yaml with sessions:)")],
    report: Annotated[Optional[Path], typer.Option("--report", metavar="FILE",
                                                   help="write a markdown report (+ timeline PNGs) here")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", min=1, rich_help_panel=MODEL_PANEL,
                                                help="reply length cap (a scenario may ask for fewer)")] = 24,
    keep_homes: Annotated[Optional[Path], typer.Option("--keep-homes", metavar="DIR",
                                                       help="keep each scenario's pllm home here")] = None,
    model: ModelOpt = None, device: DeviceOpt = None, verbose: VerboseOpt = 0,
) -> None:
    """Run scenarios, each in a fresh pllm home; exit 1 if any expectation fails."""
    setup(verbose)
    from agent.scenarios.format import ScenarioFormatError, load_scenario
    from agent.scenarios.runner import RunOptions, ScenarioRunner, scenario_files

    missing = [p for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or folder: {missing[0]}")
    files = scenario_files(paths)
    if not files:
        fail("no scenario files found (a scenario is a .yaml file with a top-level sessions: list)")
    try:
        scenarios = [load_scenario(f) for f in files]
    except ScenarioFormatError as exc:
        fail(exc)
    # The home only locates the model cache here: each scenario runs in a fresh home of its own.
    runner = ScenarioRunner(settings=settings(model=model, device=device, migrate=False),
                            options=RunOptions(max_new_tokens=max_new_tokens, keep_homes=keep_homes))
    results = _run_all(runner, scenarios)
    console.print(results_table(results))
    console.print(_summary(results))
    if report is not None:
        from agent.scenarios.report import write_report

        console.print(f"report: {escape(str(write_report(results, report)))}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def memory_graph(
    user: Annotated[str, typer.Option("--user", "-u", metavar="NAME", help="whose graph")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="PNG file to write")],
    home: HomeOpt = None, verbose: VerboseOpt = 0,
) -> Path:
    """Draw the user's current knowledge graph to a PNG."""
    setup(verbose)
    from agent.scenarios.graph_plot import draw_graph, user_graph
    from memory import PllmMemoryError

    try:
        graph = user_graph(settings(home).home, user)
    except PllmMemoryError as exc:
        fail(exc)
    path = draw_graph(graph, user, out)
    console.print(f"drew {graph.number_of_edges()} facts of {escape(user)} to {escape(str(path))}")
    return path
