"""``pllm demo``: a scripted assistant conversation over three sessions on different days.

The agent learns facts in session 1, uses them in session 2, the user's drink preference changes,
and in session 3 the new preference has replaced the old one (which stays in history).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from agent.views import events_lines, facts_table
from memory import ManualClock, utc

__all__ = ["DEMO_SESSIONS", "run_demo"]


@dataclass(frozen=True)
class DemoSession:
    at: datetime
    turns: tuple[str, ...]


DEMO_SESSIONS = (
    DemoSession(utc(2026, 1, 5, 9), (
        "Hi, I'm Sam. I live in Oslo and I drink espresso every morning.",
        "I'm allergic to peanuts.",
    )),
    DemoSession(utc(2026, 2, 10, 8), (
        "Where do I live?",
        "I switched from espresso to green tea.",
    )),
    DemoSession(utc(2026, 3, 15, 8), (
        "What should I drink this morning?",
    )),
)


def run_demo(console: Console, build: Callable[[ManualClock], object], *, user_id: str = "sam") -> None:
    """Play the demo; ``build(clock)`` returns a :class:`agent.stack.Stack` using that clock."""
    clock = ManualClock(DEMO_SESSIONS[0].at)
    with console.status("loading the model and memory…"):
        stack = build(clock)
    agent, memory = stack.agent, stack.memory  # type: ignore[attr-defined]
    console.print(Panel(escape(agent.describe()), title="pllm demo", subtitle=f"user {escape(user_id)}"))
    for n, session in enumerate(DEMO_SESSIONS, start=1):
        clock.set(session.at)
        console.rule(f"session {n} — {session.at.date().isoformat()}")
        for text in session.turns:
            console.print(f"[bold cyan]{escape(user_id)}[/] › {escape(text)}")
            console.print("[bold green]pllm[/] › ", end="")
            for piece in agent.stream(user_id, text, session_id=f"s{n}"):
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
            state = agent.last_turn(user_id, f"s{n}")
            for line in events_lines(state.get("events") or [], user_id):
                console.print(f"   [dim]memory {escape(line)}[/]")
            notes = [ln for ln in str(state["prompt"][-1].content).splitlines() if ln.startswith("- ")]
            if notes:
                console.print(f"   [dim]notes used: {escape(' '.join(notes[:4]))}[/]")
    console.rule("what pllm remembers (struck through: no longer true)")
    console.print(facts_table(memory, user_id))
    stack.close()  # type: ignore[attr-defined]
