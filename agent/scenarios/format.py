"""The scenario file format: YAML → frozen dataclasses, validated, with line numbers in every error.

A scenario is one user's life as sessions in time order, each with turns and expectations checked after
it (the contract is issue 5; see ``tests/scenarios/*.yaml`` for examples)::

    name: coffee-to-tea                 # required
    user: u1                            # required
    sessions:                           # required, strictly increasing ``at``
      - at: "2026-01-05T09:00:00"       # ISO-8601; naive times are UTC
        turns:
          - user: "I drink espresso every morning."
            feedback: 1                 # optional, -1 or 1
          - {as: u2, user: "I live in Oslo."}
        wait_for_updates: true
        expect:
          - fact: {object: espresso}

Expectation kinds and their keys are :data:`EXPECTATION_KEYS`. Every mapping is closed: an unknown key
(or a duplicate one) is an error that names the key and its line.

Extensions (pllm's own keys; files that do not use them are unaffected):

* scenario ``description`` (text for reports), ``tags`` (pytest marks, e.g. ``[slow]``),
  ``max_new_tokens`` (caps reply length for this scenario), ``memory`` (memory knobs:
  ``max_episodes_per_user``, ``recall_k``, ``fact_k``, ``half_life_days``);
* session ``forget: [u2, ...]`` — forget those users after the session's turns, before its expectations;
* expectation ``memory_size: {max_episodes: N}`` — the user has at most N episodes in the search index;
* ``user:`` on every expectation kind (the issue names it for fact, no_fact, recall, reply and edit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from memory.clock import to_utc
from memory.errors import InvalidInput
from memory.relations import DIMENSIONS
from memory.validation import check_user_id

__all__ = [
    "ScenarioFormatError",
    "Scenario",
    "Session",
    "Turn",
    "MemoryKnobs",
    "Expectation",
    "FactExpect",
    "NoFactExpect",
    "RecallExpect",
    "ReplyExpect",
    "DriftExpect",
    "WeightExpect",
    "EditExpect",
    "AdapterExpect",
    "MemorySizeExpect",
    "EXPECTATION_TYPES",
    "EXPECTATION_KEYS",
    "load_scenario",
    "parse_scenario",
    "looks_like_scenario",
]

ADAPTER_KINDS = ("edits", "style", "preference")


class ScenarioFormatError(InvalidInput):
    """A scenario file is malformed; ``str(err)`` reads ``FILE:LINE: what is wrong and what to do``."""

    def __init__(self, message: str, *, source: str = "<scenario>", line: int | None = None, key: str | None = None) -> None:
        self.source, self.line, self.key, self.reason = source, line, key, message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


# ------------------------------------------------------------------------------------------ records


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """One check after a session. ``kind`` is its YAML key; ``user`` None = the scenario's user."""

    kind: ClassVar[str] = ""
    line: int = 0
    user: str | None = None

    def describe(self) -> str:
        """A one-line summary such as ``fact object~'espresso' current``."""
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.name != "line" and getattr(self, f.name) not in (None, (), "")]
        return " ".join([self.kind, *parts])


@dataclass(frozen=True, kw_only=True)
class FactExpect(Expectation):
    """A fact matches: subject (default: the user), relation (exact, optional), object (case-insensitive
    substring). ``current: true`` → a current fact matches; ``false`` → a closed (superseded or retracted) one does."""

    kind: ClassVar[str] = "fact"
    subject: str | None = None
    relation: str | None = None
    object: str | None = None
    current: bool = True


@dataclass(frozen=True, kw_only=True)
class NoFactExpect(Expectation):
    """No *current* fact matches (closed facts are history and do not count)."""

    kind: ClassVar[str] = "no_fact"
    subject: str | None = None
    relation: str | None = None
    object: str | None = None


@dataclass(frozen=True, kw_only=True)
class RecallExpect(Expectation):
    """Recall for ``query`` (top ``k`` facts and top ``k`` episodes) contains / does not contain strings."""

    kind: ClassVar[str] = "recall"
    query: str = ""
    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    k: int | None = None  # None = the memory's configured recall_k / fact_k


@dataclass(frozen=True, kw_only=True)
class ReplyExpect(Expectation):
    """The agent's reply to ``to``: contains all of ``contains``, one of ``contains_any``, none of ``not_contains``."""

    kind: ClassVar[str] = "reply"
    to: str = ""
    contains: tuple[str, ...] = ()
    contains_any: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    remember: bool = False


@dataclass(frozen=True, kw_only=True)
class DriftExpect(Expectation):
    """A change of a held value in this session (see :mod:`agent.scenarios.expectations` for matching)."""

    kind: ClassVar[str] = "drift"
    relation: str | None = None
    object_from: str | None = None
    object_to: str | None = None
    dimension: str | None = None


@dataclass(frozen=True, kw_only=True)
class WeightExpect(Expectation):
    """The sign of the user's preference weight on ``dimension`` (-1 first pole, 1 second)."""

    kind: ClassVar[str] = "weight"
    dimension: str = ""
    sign: int = 0


@dataclass(frozen=True, kw_only=True)
class EditExpect(Expectation):
    """Closed book: the user's model continues ``prompt`` (no memory in it) greedily with ``target``."""

    kind: ClassVar[str] = "edit"
    prompt: str = ""
    target: str = ""


@dataclass(frozen=True, kw_only=True)
class ClosedBookExpect(Expectation):
    """The user's own model (their published adapter; no memory, no profile in the prompt) answers ``ask`` in
    chat form, greedily: contains all of ``contains``, one of ``contains_any``, none of ``not_contains``."""

    kind: ClassVar[str] = "closed_book"
    ask: str = ""
    contains: tuple[str, ...] = ()
    contains_any: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class AdapterExpect(Expectation):
    """The user has an adapter of ``kind`` at version ``min_version`` or later."""

    kind: ClassVar[str] = "adapter"
    adapter_kind: str = ""
    min_version: int = 1


@dataclass(frozen=True, kw_only=True)
class MemorySizeExpect(Expectation):
    """Extension: the user has at most ``max_episodes`` episodes in the search index (the cap holds)."""

    kind: ClassVar[str] = "memory_size"
    max_episodes: int = 0


@dataclass(frozen=True)
class Turn:
    text: str
    user: str | None = None  # ``as:``; None = the scenario's user
    feedback: Literal[-1, 1] | None = None
    line: int = 0


@dataclass(frozen=True)
class Session:
    index: int  # 0-based position in the file
    at: datetime  # aware UTC
    turns: tuple[Turn, ...] = ()
    wait_for_updates: bool = False
    expect: tuple[Expectation, ...] = ()
    forget: tuple[str, ...] = ()
    line: int = 0

    @property
    def session_id(self) -> str:
        return f"s{self.index + 1:04d}"


@dataclass(frozen=True)
class MemoryKnobs:
    """Extension ``memory:`` — overrides of :class:`memory.MemoryConfig` for this scenario."""

    max_episodes_per_user: int | None = None
    recall_k: int | None = None
    fact_k: int | None = None
    half_life_days: float | None = None

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Scenario:
    name: str
    user: str
    sessions: tuple[Session, ...]
    description: str = ""
    tags: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    memory: MemoryKnobs = field(default_factory=MemoryKnobs)
    source: str = "<scenario>"

    @property
    def expectations(self) -> list[tuple[Session, Expectation]]:
        """Every expectation with its session, in file order."""
        return [(s, e) for s in self.sessions for e in s.expect]


# ------------------------------------------------------------------------------------------ parsing


class _Reader:
    """Typed access to yaml nodes; every error carries the source and the node's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._constructor = yaml.SafeLoader("")  # builds Python values of scalar nodes (ints, bools, ...)

    def fail(self, node: Node | None, message: str, key: str | None = None) -> ScenarioFormatError:
        line = node.start_mark.line + 1 if node is not None else None
        return ScenarioFormatError(message, source=self.source, line=line, key=key)

    def mapping(self, node: Node, what: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Node]:
        """The mapping's values by key; unknown, duplicate or missing keys are errors."""
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} must be a mapping (key: value), got {_shape(node)}")
        out: dict[str, Node] = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key not in allowed:
                raise self.fail(key_node, f"unknown key {key!r} in {what}; allowed keys: {', '.join(allowed)}", key=str(key))
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r} in {what}", key=key)
            out[key] = value
        missing = [k for k in required if k not in out]
        if missing:
            raise self.fail(node, f"{what} is missing required key {missing[0]!r}", key=missing[0])
        return out

    def sequence(self, node: Node, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, f"{what} must be a list, got {_shape(node)}")
        return list(node.value)

    def value(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            return None
        if node.tag.endswith(":timestamp"):
            return node.value  # parsed by ``time`` (fromisoformat), the same whether quoted or not
        return self._constructor.construct_object(node)  # type: ignore[no-untyped-call]

    def text(self, node: Node, what: str) -> str:
        value = self.value(node)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(node.value)  # ``user: 42`` is the id "42"
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, f"{what} must be a non-empty string, got {_shape(node)}")
        return value

    def texts(self, node: Node, what: str) -> tuple[str, ...]:
        return tuple(self.text(n, f"each item of {what}") for n in self.sequence(node, f"{what} (a list of strings)"))

    def user(self, node: Node, what: str) -> str:
        try:
            return check_user_id(self.text(node, what), name=what)
        except InvalidInput as exc:
            raise self.fail(node, str(exc)) from None

    def integer(self, node: Node, what: str, *, minimum: int | None = None, choices: tuple[int, ...] = ()) -> int:
        value = self.value(node)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(node, f"{what} must be an integer, got {_shape(node)}")
        if choices and value not in choices:
            raise self.fail(node, f"{what} must be one of {', '.join(map(str, choices))}, got {value}")
        if minimum is not None and value < minimum:
            raise self.fail(node, f"{what} must be >= {minimum}, got {value}")
        return value

    def number(self, node: Node, what: str) -> float:
        value = self.value(node)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise self.fail(node, f"{what} must be a positive number, got {_shape(node)}")
        return float(value)

    def flag(self, node: Node, what: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            raise self.fail(node, f"{what} must be true or false, got {_shape(node)}")
        return value

    def time(self, node: Node, what: str) -> datetime:
        raw = node.value if isinstance(node, ScalarNode) else None
        try:
            if not isinstance(raw, str):
                raise ValueError
            return to_utc(datetime.fromisoformat(raw.strip()))
        except ValueError:
            raise self.fail(node, f"{what} must be an ISO-8601 time such as \"2026-01-05T09:00:00\" "
                                  f"(naive = UTC), got {_shape(node)}") from None


def _shape(node: Node | None) -> str:
    if isinstance(node, ScalarNode):
        return "nothing" if node.tag.endswith(":null") else repr(node.value)
    return {MappingNode: "a mapping", SequenceNode: "a list"}.get(type(node), "nothing")


# Each expectation kind: its keys and a builder (reader, values by key, line, body node) → expectation.
_Builder = Callable[[_Reader, dict[str, Node], int, Node], Expectation]


def _opt(v: dict[str, Node], key: str, conv: Callable[..., Any], **kw: Any) -> Any:
    """``conv(node, key, **kw)`` when ``key`` is present, else None."""
    return conv(v[key], key, **kw) if key in v else None


def _user(r: _Reader, v: dict[str, Node]) -> str | None:
    return r.user(v["user"], "user") if "user" in v else None


def _fact_like(r: _Reader, v: dict[str, Node], line: int, node: Node, what: str) -> dict[str, Any]:
    if "object" not in v and "relation" not in v:
        raise r.fail(node, f"{what} needs at least one of 'object' or 'relation'")
    return dict(line=line, user=_user(r, v), subject=_opt(v, "subject", r.text),
                relation=_opt(v, "relation", r.text), object=_opt(v, "object", r.text))


def _build_fact(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    current = r.flag(v["current"], "current") if "current" in v else True
    return FactExpect(**_fact_like(r, v, line, node, "fact"), current=current)


def _build_no_fact(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    return NoFactExpect(**_fact_like(r, v, line, node, "no_fact"))


def _build_recall(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    if "contains" not in v and "not_contains" not in v:
        raise r.fail(node, "recall needs 'contains' and/or 'not_contains' (lists of strings)")
    return RecallExpect(line=line, user=_user(r, v), query=r.text(v["query"], "query"),
                        contains=_opt(v, "contains", r.texts) or (), not_contains=_opt(v, "not_contains", r.texts) or (),
                        k=_opt(v, "k", r.integer, minimum=1))


def _build_reply(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    if not any(k in v for k in ("contains", "contains_any", "not_contains")):
        raise r.fail(node, "reply needs at least one of 'contains', 'contains_any', 'not_contains'")
    remember = r.flag(v["remember"], "remember") if "remember" in v else False
    return ReplyExpect(line=line, user=_user(r, v), to=r.text(v["to"], "to"), remember=remember,
                       contains=_opt(v, "contains", r.texts) or (), contains_any=_opt(v, "contains_any", r.texts) or (),
                       not_contains=_opt(v, "not_contains", r.texts) or ())


def _build_drift(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    dimension = _opt(v, "dimension", r.text)
    if dimension is not None and dimension not in DIMENSIONS:
        raise r.fail(v["dimension"], f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    return DriftExpect(line=line, user=_user(r, v), relation=_opt(v, "relation", r.text),
                       object_from=_opt(v, "object_from", r.text), object_to=_opt(v, "object_to", r.text),
                       dimension=dimension)


def _build_weight(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    dimension = r.text(v["dimension"], "dimension")
    if dimension not in DIMENSIONS:
        raise r.fail(v["dimension"], f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    return WeightExpect(line=line, user=_user(r, v), dimension=dimension,
                        sign=r.integer(v["sign"], "sign", choices=(-1, 1)))


def _build_edit(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    return EditExpect(line=line, user=_user(r, v), prompt=r.text(v["prompt"], "prompt"), target=r.text(v["target"], "target"))


def _build_closed_book(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    if not any(k in v for k in ("contains", "contains_any", "not_contains")):
        raise r.fail(node, "closed_book needs at least one of 'contains', 'contains_any', 'not_contains'")
    return ClosedBookExpect(line=line, user=_user(r, v), ask=r.text(v["ask"], "ask"),
                            contains=_opt(v, "contains", r.texts) or (),
                            contains_any=_opt(v, "contains_any", r.texts) or (),
                            not_contains=_opt(v, "not_contains", r.texts) or ())


def _build_adapter(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    kind = r.text(v["kind"], "kind")
    if kind not in ADAPTER_KINDS:
        raise r.fail(v["kind"], f"adapter kind must be one of {', '.join(ADAPTER_KINDS)}, got {kind!r}")
    version = r.integer(v["min_version"], "min_version", minimum=0) if "min_version" in v else 1
    return AdapterExpect(line=line, user=_user(r, v), adapter_kind=kind, min_version=version)


def _build_memory_size(r: _Reader, v: dict[str, Node], line: int, node: Node) -> Expectation:
    return MemorySizeExpect(line=line, user=_user(r, v), max_episodes=r.integer(v["max_episodes"], "max_episodes", minimum=0))


# kind → (allowed keys, required keys, builder)
_KINDS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...], _Builder]] = {
    "fact": (("subject", "relation", "object", "current", "user"), (), _build_fact),
    "no_fact": (("subject", "relation", "object", "user"), (), _build_no_fact),
    "recall": (("query", "contains", "not_contains", "k", "user"), ("query",), _build_recall),
    "reply": (("to", "contains", "contains_any", "not_contains", "remember", "user"), ("to",), _build_reply),
    "drift": (("relation", "object_from", "object_to", "dimension", "user"), (), _build_drift),
    "weight": (("dimension", "sign", "user"), ("dimension", "sign"), _build_weight),
    "edit": (("prompt", "target", "user"), ("prompt", "target"), _build_edit),
    "closed_book": (("ask", "contains", "contains_any", "not_contains", "user"), ("ask",), _build_closed_book),
    "adapter": (("kind", "min_version", "user"), ("kind",), _build_adapter),
    "memory_size": (("max_episodes", "user"), ("max_episodes",), _build_memory_size),
}
EXPECTATION_KEYS: Mapping[str, tuple[str, ...]] = {k: v[0] for k, v in _KINDS.items()}
EXPECTATION_TYPES: Mapping[str, type[Expectation]] = {
    t.kind: t for t in (FactExpect, NoFactExpect, RecallExpect, ReplyExpect, DriftExpect, WeightExpect,
                        EditExpect, ClosedBookExpect, AdapterExpect, MemorySizeExpect)
}

_SCENARIO_KEYS = ("name", "user", "sessions", "description", "tags", "max_new_tokens", "memory")
_SESSION_KEYS = ("at", "turns", "wait_for_updates", "expect", "forget")
_TURN_KEYS = ("user", "as", "feedback")
_MEMORY_KEYS = ("max_episodes_per_user", "recall_k", "fact_k", "half_life_days")


def _expectation(r: _Reader, node: Node) -> Expectation:
    if not isinstance(node, MappingNode) or len(node.value) != 1:
        raise r.fail(node, "each expectation is a mapping with one key, its kind (e.g. '- fact: {object: Oslo}'); "
                           f"kinds: {', '.join(_KINDS)}")
    key_node, body = node.value[0]
    kind = key_node.value if isinstance(key_node, ScalarNode) else None
    if kind not in _KINDS:
        raise r.fail(key_node, f"unknown expectation kind {kind!r}; kinds: {', '.join(_KINDS)}", key=str(kind))
    allowed, required, build = _KINDS[kind]
    if isinstance(body, ScalarNode) and body.tag.endswith(":null"):  # ``- drift:`` / ``- drift: {}``
        body = MappingNode("tag:yaml.org,2002:map", [], body.start_mark, body.end_mark)
    values = r.mapping(body, f"{kind} expectation", allowed, required)
    return build(r, values, key_node.start_mark.line + 1, body)


def _turn(r: _Reader, node: Node) -> Turn:
    v = r.mapping(node, "a turn", _TURN_KEYS, ("user",))
    feedback = r.integer(v["feedback"], "feedback", choices=(-1, 1)) if "feedback" in v else None
    return Turn(text=r.text(v["user"], "a turn's user text"), user=r.user(v["as"], "as") if "as" in v else None,
                feedback=feedback, line=node.start_mark.line + 1)  # type: ignore[arg-type]


def _session(r: _Reader, node: Node, index: int) -> Session:
    v = r.mapping(node, "a session", _SESSION_KEYS, ("at",))
    turns = tuple(_turn(r, n) for n in r.sequence(v["turns"], "turns")) if "turns" in v else ()
    expect = tuple(_expectation(r, n) for n in r.sequence(v["expect"], "expect")) if "expect" in v else ()
    forget = tuple(r.user(n, "forget") for n in r.sequence(v["forget"], "forget (a list of user ids)")) if "forget" in v else ()
    wait = r.flag(v["wait_for_updates"], "wait_for_updates") if "wait_for_updates" in v else False
    return Session(index=index, at=r.time(v["at"], "at"), turns=turns, wait_for_updates=wait, expect=expect,
                   forget=forget, line=node.start_mark.line + 1)


def _memory_knobs(r: _Reader, node: Node) -> MemoryKnobs:
    v = r.mapping(node, "memory", _MEMORY_KEYS)
    ints = {k: r.integer(v[k], k, minimum=1) for k in ("max_episodes_per_user", "recall_k", "fact_k") if k in v}
    half = r.number(v["half_life_days"], "half_life_days") if "half_life_days" in v else None
    return MemoryKnobs(**ints, half_life_days=half)


def parse_scenario(text: str, *, source: str = "<scenario>") -> Scenario:
    """Parse and validate one scenario document; raises :class:`ScenarioFormatError` (file:line: why)."""
    r = _Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ScenarioFormatError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source=source,
                                  line=mark.line + 1 if mark else None) from None
    if root is None:
        raise ScenarioFormatError("the file is empty; a scenario needs name, user and sessions", source=source)
    v = r.mapping(root, "the scenario", _SCENARIO_KEYS, ("name", "user", "sessions"))
    session_nodes = r.sequence(v["sessions"], "sessions")
    if not session_nodes:
        raise r.fail(v["sessions"], "sessions must not be empty")
    sessions = tuple(_session(r, n, i) for i, n in enumerate(session_nodes))
    for before, after, node in zip(sessions, sessions[1:], session_nodes[1:]):
        if after.at <= before.at:
            raise r.fail(node, f"sessions must be in strictly increasing time order: {after.at.isoformat()} "
                               f"is not after the previous session's {before.at.isoformat()}")
    return Scenario(
        name=r.text(v["name"], "name"), user=r.user(v["user"], "user"), sessions=sessions,
        description=r.text(v["description"], "description") if "description" in v else "",
        tags=r.texts(v["tags"], "tags") if "tags" in v else (),
        max_new_tokens=r.integer(v["max_new_tokens"], "max_new_tokens", minimum=1) if "max_new_tokens" in v else None,
        memory=_memory_knobs(r, v["memory"]) if "memory" in v else MemoryKnobs(), source=source,
    )


def load_scenario(path: Path | str) -> Scenario:
    """Read and parse a scenario file (UTF-8)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioFormatError(f"cannot read the scenario file: {exc}", source=str(path)) from None
    return parse_scenario(text, source=str(path))


def looks_like_scenario(text: str) -> bool:
    """Cheap test for collection: a top-level ``sessions:`` key (the file is not parsed)."""
    return any(line.startswith("sessions:") or line.startswith('"sessions":') for line in text.splitlines())
