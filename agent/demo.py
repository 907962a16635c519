"""``pllm demo``: a scripted assistant conversation over three sessions on different days.

The agent learns facts in session 1, uses them in session 2, the user's drink preference changes and
they ask for short answers, and in session 3 the new preference has replaced the old one (which stays in
history). With model updates on, the demo then shows the user's own model: their facts asked closed book, and
their style weights with the preference layer merged from the cached pole adapters (or why there is none).
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
        "Please keep your answers short.",
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
    if agent.model_level:
        show_model_level(console, stack, user_id)
    stack.close()  # type: ignore[attr-defined]


def show_model_level(console: Console, stack: object, user_id: str) -> None:
    """Wait for the knowledge edits, then ask the user's own model and the base model the same questions
    closed book (no memory, no profile in the prompt)."""
    from rich.table import Table

    from agent.model_level import edit_registry
    from editing import GenerationSettings

    agent, local = stack.agent, stack.local  # type: ignore[attr-defined]
    with console.status("the update worker is writing the facts into the user's own model (knowledge edits)…"):
        agent.worker.wait_idle()
    registry = edit_registry(stack.settings.home)  # type: ignore[attr-defined]
    try:
        edits = registry.list(user_id)
    finally:
        registry.close()
    view = agent.chat_model.view_for(user_id)
    console.rule(f"{user_id}'s own model, closed book (adapter {'v' + str(view.version) if view else 'none'}: "
                 f"{sum(e.state == 'active' for e in edits)} active edits)")
    table = Table()
    for col in ("question", "edit", "base model", f"{user_id}'s model"):
        table.add_column(col)
    settings = GenerationSettings(max_new_tokens=20)
    for edit in edits:
        if edit.state not in ("active", "rejected"):
            continue
        ask = [{"role": "user", "content": edit.question}]
        base = local.generate(ask, settings)
        own = local.generate(ask, settings, view=view)
        table.add_row(escape(edit.question), f"{edit.target} ({edit.state})", escape(base.strip()), escape(own.strip()))
    console.print(table)
    failed = [j for j in agent.worker.store.list(user_id, states=("failed",))]
    for job in failed:
        console.print(f"[red]job {job.id} failed:[/] {escape(job.error)}")
    show_preference(console, stack, user_id)


def show_preference(console: Console, stack: object, user_id: str) -> None:
    """The user's style weights and the preference layer of their published adapter (or why there is none)."""
    from agent.model_level import adapter_store, pole_store
    from agent.views import weights_line

    settings, local = stack.settings, stack.local  # type: ignore[attr-defined]
    console.rule(f"{user_id}'s style (objective level)")
    console.print(escape(weights_line(stack.memory, user_id)))  # type: ignore[attr-defined]
    trained = pole_store(settings).available(local.model_id)
    info = next((v for v in adapter_store(settings.home).versions(user_id) if v.published), None)
    pref = info.extra.get("preference") if info is not None else None
    if not trained:
        console.print("[yellow]no pole adapters are cached for this model[/]: the style weights act at the input "
                      "level only (the profile in the prompt). Train them once with `pllm align train` (minutes); "
                      "the demo does not wait for it.")
    elif isinstance(pref, dict) and pref.get("merged"):
        mix = ", ".join(f"{k} × {pref['mix'][k]:.2f}" for k in pref["merged"])
        how = ("fused at decoding time (MOD)" if pref.get("combination") == "mod"
               else f"merged with PEFT {escape(str(pref.get('combination')))}")
        console.print(f"preference layer in adapter v{info.version}: {escape(mix)} (cached poles, {how})")
    else:
        console.print(f"cached poles: {', '.join(p.key for p in trained)}; no preference layer published for "
                      f"{escape(user_id)} (no style weight leans to a trained pole)")
