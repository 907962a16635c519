"""The in-memory side of the knowledge graph: one user's materialized graph and the planning of a write.

Pure logic, no SQL: :class:`Batch` turns validated claims into fact states (mutating the user's
:class:`UserGraph` as it goes, so later claims in one batch see earlier ones) plus the rows
:mod:`memory.graph` appends to the log and the change events it returns. If appending fails, the caller
drops the mutated graph and rebuilds it from the log (the log is the truth).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple

import networkx as nx

from memory.errors import InvalidInput
from memory.extraction.base import USER_SUBJECTS, Candidate
from memory.records import (
    ChangeEvent,
    Fact,
    FactAdded,
    FactKind,
    FactRetracted,
    FactSuperseded,
    Polarity,
    PreferenceDrift,
)
from memory.relations import DIMENSIONS, RELATIONS, SlotKey, canonical_category, relation_spec, slot_key

__all__ = ["Batch", "Claim", "PlannedRow", "UserGraph", "as_graph", "replay", "resolve_subject", "to_claim"]


class PlannedRow(NamedTuple):
    """One log row to append: ``op`` leaves ``fact`` in this state."""

    op: str
    fact: Fact
    superseded_by: str | None = None


class UserGraph:
    """The materialized facts of one user: every fact ever (current and closed) plus a slot index."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.g = nx.MultiDiGraph()
        self.facts: dict[str, Fact] = {}  # id → latest state, in order of first assertion
        self.slots: dict[SlotKey, str] = {}  # slot → id of its current fact
        self.nodes: dict[str, str] = {}  # casefolded name → node name (first spelling)
        self.seq = 0  # the user's last log seq this state reflects (0: none); a newer one means rebuild

    def node(self, name: str) -> str:
        return self.nodes.setdefault(name.casefold(), name)

    def put(self, fact: Fact) -> None:
        key = slot_key(fact.subject, fact.relation, fact.object, fact.category)
        if fact.id in self.facts:
            old = self.facts[fact.id]
            self.g.edges[self.node(old.subject), self.node(old.object), fact.id]["fact"] = fact
        else:
            self.g.add_edge(self.node(fact.subject), self.node(fact.object), key=fact.id, fact=fact)
        self.facts[fact.id] = fact
        if fact.current:
            self.slots[key] = fact.id
        elif self.slots.get(key) == fact.id:
            del self.slots[key]

    def current_edges(self, node: str) -> list[tuple[str, Fact]]:
        """(other endpoint, fact) for every current fact touching ``node``, out-edges first."""
        out = [(v, f) for _, v, f in self.g.out_edges(node, data="fact") if f.current]
        return out + [(u, f) for u, _, f in self.g.in_edges(node, data="fact") if f.current]


def replay(user_id: str, facts: Iterable[Fact]) -> UserGraph:
    """Rebuild a user's graph from the fact states of their log rows, in log order."""
    state = UserGraph(user_id)
    for fact in facts:
        state.put(fact)
    return state


def as_graph(facts: Iterable[Fact]) -> nx.MultiDiGraph:
    """A fresh MultiDiGraph of ``facts`` (names merged case-insensitively, as in :class:`UserGraph`)."""
    g = nx.MultiDiGraph()
    names: dict[str, str] = {}
    for f in facts:
        u, v = names.setdefault(f.subject.casefold(), f.subject), names.setdefault(f.object.casefold(), f.object)
        g.add_edge(u, v, key=f.id, fact=f)
    return g


@dataclass(frozen=True, slots=True)
class Claim:
    """A validated candidate with the user's subject resolved and the schema applied."""

    subject: str
    relation: str
    object: str
    category: str | None
    kind: FactKind
    polarity: Polarity | None
    strength: float | None
    confidence: float
    negated: bool
    replaces: str | None


class Batch:
    """Plans one ``apply``: mutates the user's graph and collects the rows to append and the events."""

    def __init__(self, state: UserGraph, *, at: datetime, now: datetime, episode_id: str | None) -> None:
        self.state, self.at, self.now, self.episode_id = state, at, now, episode_id
        self.rows: list[PlannedRow] = []
        self.events: list[ChangeEvent] = []

    def record(self, op: str, fact: Fact, superseded_by: str | None = None) -> None:
        self.rows.append(PlannedRow(op, fact, superseded_by))
        self.state.put(fact)

    def claim(self, c: Claim) -> None:
        if c.negated:
            self._negate(c)
            return
        current_id = self.state.slots.get(slot_key(c.subject, c.relation, c.object, c.category))
        current = self.state.facts[current_id] if current_id else None
        if current is None:
            self._add(c)
        elif current.relation == c.relation and current.object.casefold() == c.object.casefold():
            self._reinforce(current, c)
        else:
            self._supersede(current, c)
        if c.replaces:
            self._move_replaced(c)

    def _new_fact(self, c: Claim) -> Fact:
        return Fact(user_id=self.state.user_id, subject=c.subject, relation=c.relation, object=c.object,
                    valid_from=self.at, recorded_at=self.now,
                    source_episode_ids=(self.episode_id,) if self.episode_id else (), confidence=c.confidence,
                    kind=c.kind, polarity=c.polarity, strength=c.strength, category=c.category)

    def _drift(self, relation: str, before: str | None, after: str) -> None:
        dimension = relation_spec(relation).dimension
        if dimension is not None:
            evidence = (self.episode_id,) if self.episode_id else ()
            self.events.append(PreferenceDrift(dimension=dimension, before=before, after=after, evidence=evidence))

    def _add(self, c: Claim) -> None:
        fact = self._new_fact(c)
        self.record("assert", fact)
        self.events.append(FactAdded(fact))
        self._drift(c.relation, None, fact.object)

    def _reinforce(self, current: Fact, c: Claim) -> None:
        """Same value again: no change event, but the new evidence is logged (auditable)."""
        evidence = current.source_episode_ids
        if self.episode_id and self.episode_id not in evidence:
            evidence = evidence + (self.episode_id,)
        confidence = max(current.confidence, c.confidence)
        if evidence != current.source_episode_ids or confidence != current.confidence:
            self.record("assert", replace(current, source_episode_ids=evidence, confidence=confidence))

    def _close(self, current: Fact) -> Fact:
        if self.at < current.valid_from:
            raise InvalidInput(
                f"at={self.at.isoformat()} is before {current.relation}={current.object!r} became true "
                f"({current.valid_from.isoformat()}); apply a user's statements in time order")
        return replace(current, valid_to=self.at)

    def _supersede(self, current: Fact, c: Claim) -> None:
        old, new = self._close(current), self._new_fact(c)
        self.record("supersede", old, superseded_by=new.id)
        self.record("assert", new)
        self.events.append(FactSuperseded(old=old, new=new))
        self._drift(c.relation, current.object, new.object)

    def _negate(self, c: Claim) -> None:
        """Close the subject's current ``relation`` edges to that object (or of that category)."""
        target = c.object.casefold()
        node = self.state.nodes.get(c.subject.casefold())
        if node is None:
            return
        for _, fact in self.state.current_edges(node):
            if (fact.subject.casefold() != c.subject.casefold() or fact.relation != c.relation
                    or not self.state.facts[fact.id].current):  # a self-loop is listed twice
                continue
            by_category = c.category is None and (fact.category or "").casefold() == canonical_category(c.object)
            if fact.object.casefold() == target or by_category:
                self.retract(fact)

    def retract(self, fact: Fact) -> FactRetracted:
        """Close ``fact`` without a replacement."""
        event = FactRetracted(self._close(fact), self.episode_id)
        self.record("retract", event.fact)
        self.events.append(event)
        return event

    def _move_replaced(self, c: Claim) -> None:
        """ "Switched from X to Y": any current functional slot of the subject holding X now holds Y."""
        old_value = c.replaces.casefold()  # type: ignore[union-attr]
        node = self.state.nodes.get(c.subject.casefold())
        for _, fact in self.state.current_edges(node) if node else []:
            if (fact.subject.casefold() == c.subject.casefold() and relation_spec(fact.relation).functional
                    and fact.object.casefold() == old_value):
                moved = Claim(fact.subject, fact.relation, c.object, fact.category, fact.kind, fact.polarity,
                               fact.strength, c.confidence, False, None)
                self._supersede(fact, moved)


def resolve_subject(user_id: str, subject: str) -> str:
    subject = subject.strip()
    return user_id if subject.casefold() in USER_SUBJECTS else subject


def to_claim(user_id: str, c: Candidate) -> Claim:
    """Validate one candidate and apply the schema (kind, polarity, category spelling, pole values)."""
    if not isinstance(c, Candidate):
        raise InvalidInput(f"candidates must be Candidate instances, got {type(c).__name__}")
    for name in ("subject", "relation", "object"):
        value = getattr(c, name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"candidate {name} must be a non-empty string, got {value!r} in {c!r}")
    spec = relation_spec(c.relation.strip())
    obj = c.object.strip()
    if spec.dimension is not None and obj.casefold() not in DIMENSIONS[spec.dimension]:
        raise InvalidInput(f"{spec.name} must be one of {DIMENSIONS[spec.dimension]}, got {obj!r}")
    if spec.dimension is not None:
        obj = obj.casefold()
    if not 0.0 <= c.confidence <= 1.0 or (c.strength is not None and not 0.0 <= c.strength <= 1.0):
        raise InvalidInput(f"confidence and strength must be within [0, 1]: {c!r}")
    if c.kind not in ("fact", "preference"):
        raise InvalidInput(f"candidate kind must be 'fact' or 'preference', got {c.kind!r}")
    kind = spec.kind if spec.name in RELATIONS else c.kind
    polarity = spec.polarity or (c.polarity if kind == "preference" else None)
    return Claim(subject=resolve_subject(user_id, c.subject), relation=spec.name, object=obj,
                  category=canonical_category(c.category), kind=kind, polarity=polarity,
                  strength=c.strength if kind == "preference" else None, confidence=float(c.confidence),
                  negated=bool(c.negated), replaces=(c.replaces or "").strip() or None)
