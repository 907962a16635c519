"""Rich renderings of memory for the CLI and demos (tables of facts, history, change events).

Every string that comes from memory (facts, turns, user ids) is escaped before it goes into a table:
rich would read ``[...]`` in a user's text as markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from memory import ChangeEvent, Fact, FactAdded, FactRetracted, FactSuperseded, PreferenceDrift, StyleDrift

if TYPE_CHECKING:  # pragma: no cover
    from memory.retrieval import Recollection
    from memory.service import Memory

__all__ = ["describe_event", "facts_table", "recollection_table", "weights_line"]


def _fact(f: Fact, user_id: str) -> str:
    subject = "" if f.subject == user_id else f"{f.subject} "
    rel = f.relation.replace("_", " ") + (f" ({f.category})" if f.category else "")
    return f"{subject}{rel}: {f.object}"


def describe_event(ev: ChangeEvent, user_id: str) -> str:
    """One line per change event, e.g. ``"~ lives in: Oslo → Bergen"``."""
    if isinstance(ev, FactAdded):
        return f"+ {_fact(ev.fact, user_id)}"
    if isinstance(ev, FactSuperseded):
        return f"~ {_fact(ev.old, user_id)} → {ev.new.object}"
    if isinstance(ev, FactRetracted):
        return f"- {_fact(ev.fact, user_id)} (no longer true)"
    if isinstance(ev, PreferenceDrift):
        before, after = (f"{v:+.2f}" if isinstance(v, float) else str(v) for v in (ev.before, ev.after))
        return f"≈ preference drift on {ev.dimension}: {before} → {after}"
    if isinstance(ev, StyleDrift):
        return f"≈ style drift in {ev.statistic} ({ev.score:+.2f})"
    return repr(ev)


def facts_table(memory: "Memory", user_id: str, *, with_history: bool = True) -> Table:
    """The user's facts: current ones, and (with history) superseded ones with their validity spans."""
    table = Table(title=f"memory of {escape(user_id)}", show_lines=False)
    for col in ("fact", "since", "until", "evidence"):
        table.add_column(col)
    facts = memory.facts(user_id, include_superseded=with_history)
    for f in sorted(facts, key=lambda f: (f.relation, f.valid_from)):
        until = f.valid_to.date().isoformat() if f.valid_to else "now"
        style = None if f.current else "dim strike"
        table.add_row(escape(_fact(f, user_id)), f.valid_from.date().isoformat(), until,
                      f"{len(f.source_episode_ids)} turn(s)", style=style)
    return table


def weights_line(memory: "Memory", user_id: str) -> str:
    """The user's style weights in one line, e.g. ``"style weights: verbosity -1.00 (concise), formality +0.00, …"``."""
    weights = memory.preference_weights(user_id)
    parts = [f"{d} {w.weight:+.2f}" + (f" ({w.pole})" if w.pole else "") for d, w in weights.items()]
    rated = max(w.ratings for w in weights.values())
    return f"style weights: {', '.join(parts)} (statements, and {rated} rated repl{'y' if rated == 1 else 'ies'})"


def recollection_table(rec: "Recollection | None") -> Table:
    """What the last recall put in front of the model."""
    table = Table(title="last retrieved memories")
    for col in ("kind", "when", "text", "score", "found by"):
        table.add_column(col)
    if rec is None:
        return table
    for sf in rec.facts:
        table.add_row("fact", sf.fact.valid_from.date().isoformat(), escape(sf.fact.text()), f"{sf.score:.3f}", "")
    for e in rec.episodes:
        table.add_row(e.role, e.at.date().isoformat(), escape(e.text[:90]), f"{e.score:.3f}", escape(",".join(e.sources)))
    return table


def events_lines(events: Sequence[ChangeEvent], user_id: str) -> list[str]:
    """One plain line per change event (not escaped: escape them where they are printed as markup)."""
    return [describe_event(ev, user_id) for ev in events]
