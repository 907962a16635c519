"""Markdown reports of scenario runs, with one timeline PNG per scenario.

The timeline shows the scenario user's facts over the scenario's time: one row per relation (a
``favorite`` row per category), each value a bar from ``valid_from`` to ``valid_to`` — or to the last
session when still current; values that overlap in time share the row in thin lanes. Changes are
marked where they happened (a legend says which marker is which); the sessions are ticks along the
bottom.

matplotlib is used object-oriented with an explicit Agg canvas: no pyplot, no global backend change.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from memory import Fact

    from agent.scenarios.runner import ScenarioResult, Timeline

__all__ = ["plot_timeline", "render_markdown", "write_report"]

_MARKERS = {"superseded": ("v", "#c0392b"), "replaced": ("v", "#c0392b"), "retracted": ("X", "#222222"),
            "preference": ("D", "#8e44ad")}


def _row_label(fact: "Fact") -> str:
    return f"{fact.relation} ({fact.category})" if fact.category else fact.relation


def _lanes(spans: list[tuple[datetime, datetime, "Fact"]]) -> list[list[tuple[datetime, datetime, "Fact"]]]:
    """Greedy interval partitioning: spans that overlap in time go to different lanes."""
    lanes: list[list[tuple[datetime, datetime, Fact]]] = []
    for span in sorted(spans, key=lambda s: s[0]):
        for lane in lanes:
            if lane[-1][1] <= span[0]:
                lane.append(span)
                break
        else:
            lanes.append([span])
    return lanes


def plot_timeline(timeline: "Timeline", out: Path, *, title: str = "") -> Path:
    """Draw ``timeline`` to a PNG at ``out`` (parent folders are created)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure

    start = min([timeline.session_times[0], *(f.valid_from for f in timeline.facts)])
    end = max(timeline.end, *(f.valid_to for f in timeline.facts if f.valid_to is not None), start)
    end = end + max((end - start) * 0.04, timedelta(hours=12))  # room for the last value's label
    rows: dict[str, list[tuple[datetime, datetime, Fact]]] = defaultdict(list)
    for f in sorted(timeline.facts, key=lambda f: f.valid_from):
        rows[_row_label(f)].append((f.valid_from, f.valid_to or end, f))
    labels = list(rows)
    fig = Figure(figsize=(11, 1.6 + 0.55 * max(len(labels), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, label in enumerate(labels):
        lanes = _lanes(rows[label])
        height = 0.8 / len(lanes)
        for i, lane in enumerate(lanes):
            lane_y = y - 0.4 + height * (i + 0.5)
            for a, b, fact in lane:
                x0, x1 = date2num(a), date2num(b)
                ax.barh(lane_y, x1 - x0, left=x0, height=height * 0.9, color="#2e86c1" if fact.current else "#aab7b8",
                        edgecolor="white")
                ax.text(x0, lane_y, f" {fact.object}", va="center", ha="left", fontsize=7, clip_on=True,
                        color="white" if fact.current else "#1c2833")
    index = {label.split(" (")[0]: y for y, label in enumerate(labels)}
    for change in timeline.changes:
        row = next((index[r] for r in change.relations if r in index), None)
        marker, color = _MARKERS.get(change.source, ("o", "#7f8c8d"))
        if row is not None:
            ax.plot(date2num(change.at), row - 0.45, marker=marker, color=color, markersize=7, zorder=5)
    ax.plot([date2num(t) for t in timeline.session_times], [-0.7] * len(timeline.session_times), "|", color="#566573",
            markersize=6)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-1.0, max(len(labels), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(date2num(start) - 0.5, date2num(end))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(axis="x", alpha=0.3)
    if not labels:
        ax.text(0.5, 0.5, "no facts", transform=ax.transAxes, ha="center", color="#7f8c8d")
    ax.legend(handles=_legend_handles(), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_title(title or f"facts of {timeline.user} over time", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def _legend_handles() -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [Patch(color="#2e86c1", label="current value"), Patch(color="#aab7b8", label="closed value"),
            Line2D([], [], marker="v", color="#c0392b", ls="", label="changed"),
            Line2D([], [], marker="X", color="#222222", ls="", label="retracted"),
            Line2D([], [], marker="D", color="#8e44ad", ls="", label="preference drift"),
            Line2D([], [], marker="|", color="#566573", ls="", label="session")]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "scenario"


def render_markdown(results: Sequence["ScenarioResult"], images: dict[str, str] | None = None) -> str:
    """The report text; ``images`` maps a scenario name to its timeline image's relative path."""
    images = images or {}
    passed = sum(r.counts[0] for r in results)
    total = sum(r.counts[1] for r in results)
    lines = ["# pllm scenario report", "",
             f"{sum(r.passed for r in results)} of {len(results)} scenarios passed; {passed} of {total} expectations.", "",
             "| scenario | expectations passed | sessions | turns | wall time (s) |", "|---|---|---|---|---|"]
    for r in results:
        ok, n = r.counts
        lines.append(f"| {_cell(r.scenario.name)} | {ok}/{n} | {len(r.scenario.sessions)} | {r.turn_count} | {r.wall_s:.1f} |")
    for r in results:
        lines += ["", f"## {r.scenario.name}", ""]
        if r.scenario.description:
            lines += [_cell(r.scenario.description), ""]
        lines += [f"Source: `{r.scenario.source}` · user `{r.scenario.user}` · {r.wall_s:.1f} s", ""]
        if r.error:
            lines += [f"**Stopped early:** {_cell(r.error)}", ""]
        if r.scenario.name in images:
            lines += [f"![timeline of {r.scenario.user}]({images[r.scenario.name]})", ""]
        lines += ["| session | at | expectation | result | found |", "|---|---|---|---|---|"]
        for e in r.results:
            verdict = "pass" if e.passed else ("not supported yet" if e.unsupported else "**FAIL**")
            lines.append(f"| {e.session_index + 1} | {e.session_at:%Y-%m-%d %H:%M} | {_cell(e.expectation.describe())} "
                         f"| {verdict} | {_cell(e.detail)} |")
    return "\n".join(lines) + "\n"


def write_report(results: Sequence["ScenarioResult"], out: Path | str) -> Path:
    """Write the markdown report to ``out`` and the timelines to ``<out stem>_timelines/`` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent / f"{out.stem}_timelines"
    images: dict[str, str] = {}
    for r in results:
        png = plot_timeline(r.timeline, folder / f"{_slug(r.scenario.name)}.png",
                            title=f"{r.scenario.name}: facts of {r.scenario.user} over time")
        images[r.scenario.name] = png.relative_to(out.parent).as_posix()
    out.write_text(render_markdown(results, images), encoding="utf-8")
    return out
