"""Draw a user's current knowledge graph to a PNG (networkx layout, matplotlib Agg canvas, no pyplot)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

__all__ = ["draw_graph", "user_graph"]


def user_graph(home: Path | None, user: str) -> "nx.MultiDiGraph":
    """The user's current graph from the knowledge-graph log under ``home`` (read only; no Chroma, no model).

    Raises ``UnknownUser`` when there is no memory at ``home`` or no fact about ``user``.
    """
    from agent.settings import Settings
    from memory import SystemClock, UnknownUser
    from memory.graph import KnowledgeGraph
    from memory.validation import check_user_id

    user = check_user_id(user)
    settings = Settings(home=home) if home is not None else Settings()
    path = settings.memory_config().sqlite_path
    if not path.exists():
        raise UnknownUser(f"there is no pllm memory at {path.parent}; pass --home (or set PLLM_HOME) to the home you chat in")
    with KnowledgeGraph(path, SystemClock()) as kg:
        if user not in kg.users():
            known = ", ".join(kg.users()) or "none"
            raise UnknownUser(f"no facts are stored for user {user!r} under {path.parent} (users with facts: {known})")
        return kg.graph(user)


def draw_graph(graph: "nx.MultiDiGraph", user: str, out: Path | str) -> Path:
    """Draw ``graph`` (edges carry a ``fact``) to ``out``: the user's node highlighted, edges labelled by
    relation (parallel edges between two nodes share one label)."""
    import networkx as nx
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels: dict[tuple[str, str], list[str]] = defaultdict(list)
    for u, v, data in graph.edges(data=True):
        fact = data.get("fact")
        rel = fact.relation + (f" ({fact.category})" if fact and fact.category else "") if fact else ""
        labels[(u, v)].append(rel)
    simple = nx.DiGraph()
    simple.add_nodes_from(graph.nodes)
    simple.add_edges_from(labels)
    n = max(simple.number_of_nodes(), 1)
    fig = Figure(figsize=(min(4 + 0.6 * n, 16), min(3 + 0.45 * n, 12)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    if simple.number_of_nodes() == 0:
        ax.text(0.5, 0.5, f"{user} has no current facts", ha="center", transform=ax.transAxes)
    else:
        pos = nx.spring_layout(simple, seed=7, k=1.6 / n ** 0.5)  # seeded: the same graph draws the same way
        colors = ["#e67e22" if node == user else "#aed6f1" for node in simple.nodes]
        nx.draw_networkx_nodes(simple, pos, ax=ax, node_color=colors, node_size=900)
        nx.draw_networkx_labels(simple, pos, ax=ax, font_size=8)
        nx.draw_networkx_edges(simple, pos, ax=ax, arrows=True, arrowsize=12, node_size=900, edge_color="#7f8c8d")
        nx.draw_networkx_edge_labels(simple, pos, ax=ax, font_size=7,
                                     edge_labels={e: ", ".join(sorted(set(r))) for e, r in labels.items()})
    ax.set_title(f"knowledge graph of {user} (current facts)", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
