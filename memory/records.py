"""Typed records of the memory layer.

All records are frozen dataclasses validated on construction; times are aware UTC datetimes.

``Fact`` is bi-temporal: ``valid_from``/``valid_to`` say when it was true in the user's world
(``valid_to is None`` means "still true"), ``recorded_at`` says when pllm learnt it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, Union

from memory.clock import to_utc

__all__ = [
    "Role",
    "FactKind",
    "Polarity",
    "Episode",
    "Fact",
    "FactAdded",
    "FactSuperseded",
    "FactRetracted",
    "PreferenceDrift",
    "StyleDrift",
    "ChangeEvent",
    "new_id",
    "record_to_dict",
]

Role = Literal["user", "assistant", "system", "summary"]
FactKind = Literal["fact", "preference"]
Polarity = Literal["likes", "dislikes"]

_ROLES = ("user", "assistant", "system", "summary")


def new_id(prefix: str) -> str:
    """A fresh, sortable-enough unique id such as ``ep_3f2a...``."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty or whitespace")


def _check_time(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return to_utc(value)


@dataclass(frozen=True, slots=True)
class Episode:
    """One turn or event in a user's life, as it was said."""

    user_id: str
    session_id: str
    role: Role
    text: str
    at: datetime  # when it happened (event time)
    recorded_at: datetime  # when pllm stored it
    id: str = field(default_factory=lambda: new_id("ep"))
    importance: float = 0.5  # 0..1; how much it matters beyond its similarity to a query

    def __post_init__(self) -> None:
        _check_text("user_id", self.user_id)
        _check_text("session_id", self.session_id)
        _check_text("text", self.text)
        if self.role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {self.role!r}")
        object.__setattr__(self, "at", _check_time("at", self.at))
        object.__setattr__(self, "recorded_at", _check_time("recorded_at", self.recorded_at))
        if not 0.0 <= float(self.importance) <= 1.0:
            raise ValueError(f"importance must be within [0, 1], got {self.importance}")


@dataclass(frozen=True, slots=True)
class Fact:
    """A knowledge-graph edge ``subject --relation--> object`` about one user's world."""

    user_id: str
    subject: str
    relation: str
    object: str
    valid_from: datetime
    recorded_at: datetime
    valid_to: datetime | None = None  # None = still true
    source_episode_ids: tuple[str, ...] = ()
    confidence: float = 1.0
    kind: FactKind = "fact"
    polarity: Polarity | None = None  # preferences only
    strength: float | None = None  # preferences only, 0..1
    category: str | None = None  # e.g. "food" for favorite(food)
    id: str = field(default_factory=lambda: new_id("fact"))

    def __post_init__(self) -> None:
        for name in ("user_id", "subject", "relation", "object"):
            _check_text(name, getattr(self, name))
        object.__setattr__(self, "valid_from", _check_time("valid_from", self.valid_from))
        object.__setattr__(self, "recorded_at", _check_time("recorded_at", self.recorded_at))
        if self.valid_to is not None:
            valid_to = _check_time("valid_to", self.valid_to)
            if valid_to < self.valid_from:
                raise ValueError(f"valid_to ({valid_to}) is before valid_from ({self.valid_from})")
            object.__setattr__(self, "valid_to", valid_to)
        object.__setattr__(self, "source_episode_ids", tuple(self.source_episode_ids))
        if not 0.0 <= float(self.confidence) <= 1.0:
            raise ValueError(f"confidence must be within [0, 1], got {self.confidence}")
        if self.kind not in ("fact", "preference"):
            raise ValueError(f"kind must be 'fact' or 'preference', got {self.kind!r}")
        if self.polarity is not None and self.polarity not in ("likes", "dislikes"):
            raise ValueError(f"polarity must be 'likes' or 'dislikes', got {self.polarity!r}")
        if self.strength is not None and not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"strength must be within [0, 1], got {self.strength}")

    @property
    def current(self) -> bool:
        """True while the fact has not been superseded or retracted."""
        return self.valid_to is None

    def valid_at(self, when: datetime) -> bool:
        """Was this fact true in the user's world at ``when``?"""
        when = to_utc(when)
        return self.valid_from <= when and (self.valid_to is None or when < self.valid_to)

    def text(self) -> str:
        """A short sentence for prompts and embeddings, e.g. ``"u1 lives_in Oslo"`` → "lives in Oslo"."""
        rel = self.relation.replace("_", " ")
        if self.category:
            rel = f"{rel} {self.category}"
        return f"{self.subject} {rel}: {self.object}"


@dataclass(frozen=True, slots=True)
class FactAdded:
    """A new edge that replaced nothing."""

    fact: Fact


@dataclass(frozen=True, slots=True)
class FactSuperseded:
    """A new value of a functional relation closed the old edge (``old.valid_to`` is set)."""

    old: Fact
    new: Fact


@dataclass(frozen=True, slots=True)
class FactRetracted:
    """An explicit negation ("I no longer live in X") closed an edge without a replacement."""

    fact: Fact
    evidence_episode_id: str | None = None


@dataclass(frozen=True, slots=True)
class PreferenceDrift:
    """A user's preference moved along a dimension (e.g. verbosity: detailed → concise)."""

    dimension: str
    before: str | float | None
    after: str | float
    evidence: tuple[str, ...] = ()  # episode ids


@dataclass(frozen=True, slots=True)
class StyleDrift:
    """A statistical detector saw the user's style statistics shift."""

    user_id: str
    statistic: str
    score: float


ChangeEvent = Union[FactAdded, FactSuperseded, FactRetracted, PreferenceDrift, StyleDrift]


def record_to_dict(record: Any) -> dict[str, Any]:
    """A JSON-ready dict of a record (datetimes as ISO-8601 strings, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "__dataclass_fields__"):
            value = record_to_dict(value)
        out[f.name] = value
    return out


