"""Helpers shared by the model benchmarks: repo on the path, a ``--json`` flag, a table, the JSON last line."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from typing import Any

def parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser described by the first paragraph of ``doc``, with ``--json`` already added."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    return p


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout (numbers formatted by the caller)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console().print(table)


def emit_json(summary: dict[str, Any]) -> None:
    """The machine-readable result: one JSON object, the last line printed."""
    print(json.dumps(summary), flush=True)
