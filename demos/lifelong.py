"""A narrated lifelong-learning scenario: watch pllm's memory follow a user's life, session by session.

    python demos/lifelong.py                                  # the bundled supersession scenario
    python demos/lifelong.py tests/scenarios/negation.yaml    # any scenario file
    python demos/lifelong.py --max-new-tokens 48 --report /tmp/life.md

For each session it shows the date, what the user said, the agent's (real, local-model) reply, what
memory learnt or changed, and whether the session's expectations held. At the end: the user's facts
with their history, and optionally a markdown report with the timeline picture.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "tests" / "scenarios" / "supersession_with_history.yaml"


def _event_lines(turn) -> list[str]:  # noqa: ANN001 - agent.scenarios.expectations.TurnRecord
    from memory import FactAdded

    from agent.scenarios.expectations import changes_of

    lines = [f"[green]+ learnt[/] {e.fact.relation.replace('_', ' ')}: {escape(e.fact.object)}"
             for e in turn.events if isinstance(e, FactAdded)]
    lines += [f"[yellow]~ changed[/] {escape(c.describe())}" for c in changes_of(turn.user, turn.events, turn.at)]
    return lines


class Narrator:
    """Prints a run as it happens: the session's date, each turn, what memory did, the checks."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._announced: set[int] = set()

    def _announce(self, session) -> None:  # noqa: ANN001 - agent.scenarios.format.Session
        if session.index not in self._announced:
            self._announced.add(session.index)
            self.console.print(f"[bold]session {session.index + 1}[/] — {session.at:%A %d %B %Y, %H:%M}")

    def on_turn(self, session, turn) -> None:  # noqa: ANN001
        self._announce(session)
        self.console.print(f"  [bold cyan]{turn.user}[/] › {escape(turn.text)}", highlight=False)
        self.console.print(f"  [bold green]agent[/] › {escape(turn.reply.strip()) or '…'}", highlight=False)
        for line in _event_lines(turn):
            self.console.print(f"      {line}", highlight=False)

    def on_session(self, record, scenario) -> None:  # noqa: ANN001 - SessionRecord, Scenario
        self._announce(scenario.sessions[record.index])
        if record.forgotten:
            self.console.print(f"    [magenta]forgot everything about[/] {', '.join(record.forgotten)}")
        for result in record.results:
            mark = "[green]✓[/]" if result.passed else ("[yellow]…[/]" if result.unsupported else "[red]✗[/]")
            self.console.print(f"    {mark} {escape(result.expectation.describe())}  [dim]{escape(result.detail)}[/]",
                               highlight=False)
        self.console.print()


def _summary(console: Console, result) -> None:  # noqa: ANN001 - ScenarioResult
    table = Table(title=f"what pllm knows about {result.timeline.user} at the end (history included)")
    for col in ("relation", "value", "from", "until"):
        table.add_column(col)
    for f in sorted(result.timeline.facts, key=lambda f: (f.relation, f.valid_from)):
        until = f.valid_to.strftime("%Y-%m-%d") if f.valid_to else "[green]now[/]"
        table.add_row(f.relation + (f" ({f.category})" if f.category else ""), f.object,
                      f.valid_from.strftime("%Y-%m-%d"), until)
    console.print(table)
    ok, n = result.counts
    colour = "green" if result.passed else "red"
    console.print(f"[{colour}]{ok} of {n} expectations held[/] in {result.wall_s:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", type=Path, default=DEFAULT, help="a scenario YAML file")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="reply length cap (default 32)")
    parser.add_argument("--report", type=Path, default=None, help="also write a markdown report with the timeline")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model comes from a package on disk
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

    from agent.scenarios import RunOptions, ScenarioRunner, load_scenario

    console = Console()
    scenario = load_scenario(args.scenario)
    console.print(Panel(f"[bold]{scenario.name}[/]\n{scenario.description.strip()}", title="a life in sessions",
                        expand=False))
    console.print(f"[dim]{len(scenario.sessions)} sessions. One scenario clock drives every component; each reply "
                  "comes from the local model, each fact from the memory layer.[/]\n")
    runner = ScenarioRunner(options=RunOptions(max_new_tokens=args.max_new_tokens))
    with console.status("loading the local model…"):
        _ = runner.local  # load before the first session is announced
    narrator = Narrator(console)
    result = runner.run(scenario, on_turn=narrator.on_turn,
                        on_session=lambda record: narrator.on_session(record, scenario))
    if result.error:
        console.print(f"[red]the scenario stopped early:[/] {result.error}")
    _summary(console, result)
    if args.report:
        from agent.scenarios import write_report

        console.print(f"report with the timeline picture: {write_report([result], args.report)}")


if __name__ == "__main__":
    main()
