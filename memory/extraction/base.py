"""What every extractor returns: :class:`Candidate` edges, and the one-method :class:`Extractor` protocol.

A candidate is a *claim* found in text, not yet a fact: the knowledge graph decides in
:meth:`memory.graph.KnowledgeGraph.apply` whether it adds, supersedes, reinforces or retracts an edge.
Subjects ``"user"`` / ``"self"`` mean the speaker; third parties keep their names (``"Anna"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Candidate", "Extractor", "USER_SUBJECTS"]

# Subjects that stand for the speaking user; the graph maps them onto the user id.
USER_SUBJECTS = frozenset({"user", "self", "i", "me", "my", "myself"})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One claimed edge ``subject --relation--> object``.

    ``negated``: the text says the edge no longer holds ("I no longer live in Oslo") — it closes a
    matching current edge and creates nothing. ``replaces``: the object this one replaces ("I switched
    from coffee to tea" → ``likes tea`` with ``replaces="coffee"``); the graph moves any current
    functional slot of the subject that holds ``replaces`` (e.g. favorite drink) to the new object.
    """

    subject: str
    relation: str
    object: str
    kind: Literal["fact", "preference"] = "fact"
    polarity: Literal["likes", "dislikes"] | None = None
    strength: float | None = None
    category: str | None = None
    negated: bool = False
    confidence: float = 0.9
    replaces: str | None = None


@runtime_checkable
class Extractor(Protocol):
    """Anything that turns one message into candidate edges. Must not raise on odd text: return []."""

    def extract(self, text: str, *, role: str = "user") -> list[Candidate]: ...
