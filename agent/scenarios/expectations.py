"""One small check per expectation kind, registered in the plain dict :data:`CHECKS`.

A check reads the stack through a :class:`CheckContext` and returns an :class:`Outcome` whose ``detail``
says what matched, or — on failure — what was found instead. Checks observe and never change memory:
``recall`` and ``reply`` (with ``remember: false``) use the retriever directly, which writes nothing,
instead of ``Memory.recall``, which strengthens what it returns (recall counts feed forgetting).

Matching rules (all string comparisons case-insensitive):

* ``fact``/``no_fact``: subject = the expectation's ``subject`` (``user``/``me`` or absent = the user),
  relation exact after :func:`memory.relations.normalize_relation` (absent = any), object a substring.
  ``fact`` with ``current: true`` needs a current match, with ``current: false`` a closed one (superseded
  or retracted). ``no_fact`` passes when no *current* fact matches.
* ``recall``: the text of the top ``k`` facts (as the prompt renders them, e.g. "I live in Oslo.") and
  the top ``k`` episodes for the query; each ``contains`` string must occur in it, no ``not_contains``
  string may. The profile (every current fact, which each prompt carries whole) is not part of it.
* ``drift``: the *changes* of this session's turns of that user (see :func:`changes_of`): a change
  matches when every given key matches — ``relation`` equals one of the change's relations,
  ``object_from``/``object_to`` are substrings of the old/new value; ``{}`` matches any change. A first
  mention (``FactAdded`` with nothing replaced) is not a change.
* ``memory_size`` (extension): the user's indexed episodes are at most ``max_episodes``.

* ``closed_book`` (model level): after the update worker has finished the jobs queued so far, the user's own
  model — their published adapter, no memory and no profile in the prompt — answers ``ask`` in chat form,
  greedily; checked like ``reply``. ``edit``: the same model's plain greedy continuation of ``prompt``
  contains ``target``. A failure lists the user's failed jobs.

* ``adapter`` (model level): after the worker has finished, the user's published adapter holds ``kind``:
  ``edits`` (a knowledge edit, in adapter version ``min_version`` or later), ``style`` (a style layer of
  version ``min_version`` or later) or ``preference`` (a preference layer: pole adapters merged by the user's
  style weights, in adapter version ``min_version`` or later; needs the poles, ``pllm align train``).

* ``weight``: the sign of the user's style weight on ``dimension`` (:meth:`memory.Memory.preference_weights`:
  their current statement, moved by their ratings of replies since); 0 (no preference) matches neither sign.
  ``drift: {dimension: ...}`` matches a ``PreferenceDrift`` on that dimension among the session's changes: an
  explicit reversal ("keep it short" … "more detail please") or a rating that turned the weight.

A check of a kind pllm cannot run yet would fail with ``unsupported`` set (:func:`not_supported`); every kind
runs today.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memory.records import (
    ChangeEvent,
    Fact,
    FactAdded,
    FactRetracted,
    FactSuperseded,
    PreferenceDrift,
    StyleDrift,
)
from memory.relations import normalize_relation

from editing.generation import GenerationSettings

from agent.scenarios.format import (
    AdapterExpect,
    ClosedBookExpect,
    DriftExpect,
    EditExpect,
    Expectation,
    FactExpect,
    MemorySizeExpect,
    NoFactExpect,
    RecallExpect,
    ReplyExpect,
    Scenario,
    Session,
    WeightExpect,
)

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.messages import BaseMessage

    from agent.stack import Stack

__all__ = ["CHECKS", "NOT_SUPPORTED", "Change", "CheckContext", "Outcome", "TurnRecord", "changes_of", "check",
           "probe_reply"]

NOT_SUPPORTED = "not supported yet by this version of pllm"
_USER_WORDS = frozenset({"user", "self", "i", "me", "my", "myself"})
_SHOW = 8  # how many found items a failure message lists


@dataclass(frozen=True)
class Outcome:
    passed: bool
    detail: str  # what matched, or what was found instead
    unsupported: bool = False


@dataclass(frozen=True)
class TurnRecord:
    """One turn as it ran: who said what, the agent's reply and the change events it caused."""

    user: str
    text: str
    reply: str
    events: tuple[ChangeEvent, ...]
    jobs: tuple[str, ...]
    at: datetime
    seconds: float
    feedback: int | None = None
    line: int = 0


@dataclass(frozen=True)
class Change:
    """A held value that changed: ``object_from`` → ``object_to`` (None: retracted with no replacement).

    ``source``: ``superseded`` (a functional slot took a new value), ``replaced`` (a retraction and an
    addition of the same relation in one turn, e.g. "I switched from espresso to green tea"), ``retracted``,
    ``preference`` (a ``PreferenceDrift``) or ``style`` (a ``StyleDrift``; it has no relation or values).
    """

    user: str
    at: datetime
    relations: tuple[str, ...]
    object_from: str | None
    object_to: str | None
    source: str
    dimension: str | None = None

    def describe(self) -> str:
        rel = "/".join(self.relations) or "style"
        return f"{rel}: {self.object_from or '∅'} → {self.object_to or '(retracted)'} [{self.source}]"


def changes_of(user: str, events: Sequence[ChangeEvent], at: datetime) -> list[Change]:
    """The changes in one turn's events (additions pair with retractions of the same relation and category)."""
    added = [e.fact for e in events if isinstance(e, FactAdded)]
    out: list[Change] = []
    for ev in events:
        if isinstance(ev, FactSuperseded):
            rels = tuple(dict.fromkeys((ev.old.relation, ev.new.relation)))
            out.append(Change(user, at, rels, ev.old.object, ev.new.object, "superseded"))
        elif isinstance(ev, FactRetracted):
            partner = next((f for f in added if f.relation == ev.fact.relation and f.category == ev.fact.category), None)
            if partner is not None:
                added.remove(partner)
            out.append(Change(user, at, (ev.fact.relation,), ev.fact.object, partner.object if partner else None,
                              "replaced" if partner else "retracted"))
        elif isinstance(ev, PreferenceDrift):
            before = None if ev.before is None else str(ev.before)
            out.append(Change(user, at, (f"prefers_{ev.dimension}",), before, str(ev.after), "preference", ev.dimension))
        elif isinstance(ev, StyleDrift):
            out.append(Change(user, at, (), None, None, "style"))
    return out


@dataclass
class CheckContext:
    """What a check may look at: the live stack, the scenario, the session and its turns so far."""

    stack: "Stack"
    scenario: Scenario
    session: Session
    turns: list[TurnRecord] = field(default_factory=list)

    def user_of(self, exp: Expectation) -> str:
        return exp.user or self.scenario.user

    def changes(self, user: str) -> list[Change]:
        return [c for t in self.turns if t.user == user for c in changes_of(user, t.events, t.at)]


Check = Callable[[CheckContext, Any], Outcome]


# ------------------------------------------------------------------------------------------ helpers


def _has(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _fact_line(f: Fact) -> str:
    rel = f.relation + (f"({f.category})" if f.category else "")
    closed = "" if f.current else f" [closed {f.valid_to.date().isoformat()}]"  # type: ignore[union-attr]
    return f"{rel}={f.object}{closed}"


def _listing(items: Iterable[str], empty: str = "nothing") -> str:
    items = list(items)
    if not items:
        return empty
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return "; ".join(items[:_SHOW]) + more


def _matching(ctx: CheckContext, exp: FactExpect | NoFactExpect) -> tuple[list[Fact], list[Fact]]:
    """(matching facts, all the user's facts incl. closed ones) for a fact-like expectation."""
    user = ctx.user_of(exp)
    facts = ctx.stack.memory.facts(user, include_superseded=True)
    subject = user if exp.subject is None or exp.subject.strip().casefold() in _USER_WORDS else exp.subject.strip()
    relation = normalize_relation(exp.relation)[0] if exp.relation else None
    hits = [f for f in facts if f.subject.casefold() == subject.casefold()
            and (relation is None or f.relation == relation)
            and (exp.object is None or _has(f.object, exp.object))]
    return hits, facts


# ------------------------------------------------------------------------------------------ checks


def check_fact(ctx: CheckContext, exp: FactExpect) -> Outcome:
    hits, facts = _matching(ctx, exp)
    wanted = [f for f in hits if f.current == exp.current]
    if wanted:
        return Outcome(True, _listing(_fact_line(f) for f in wanted))
    state = "current" if exp.current else "closed (superseded or retracted)"
    other = f"; matching but {'closed' if exp.current else 'still current'}: {_listing(_fact_line(f) for f in hits)}" if hits else ""
    return Outcome(False, f"no {state} fact matched{other}; the user's facts: "
                          f"{_listing((_fact_line(f) for f in facts if f.current), 'none')}")


def check_no_fact(ctx: CheckContext, exp: NoFactExpect) -> Outcome:
    hits, _ = _matching(ctx, exp)
    current = [f for f in hits if f.current]
    if current:
        return Outcome(False, f"found current: {_listing(_fact_line(f) for f in current)}")
    closed = [f for f in hits if not f.current]
    return Outcome(True, f"none current (history: {_listing(_fact_line(f) for f in closed)})" if closed else "none")


def check_recall(ctx: CheckContext, exp: RecallExpect) -> Outcome:
    from agent.prompt import render_fact

    user, memory = ctx.user_of(exp), ctx.stack.memory
    k_eps, k_facts = exp.k or memory.config.recall_k, exp.k or memory.config.fact_k
    # The retriever writes nothing (Memory.recall would also bump recall counts): a probe leaves no trace.
    rec = memory.retriever.retrieve(user, exp.query, k_episodes=k_eps, k_facts=k_facts)
    items = [render_fact(sf.fact, user) for sf in rec.facts] + [e.text for e in rec.episodes]
    text = "\n".join(items)
    missing = [s for s in exp.contains if not _has(text, s)]
    present = [s for s in exp.not_contains if _has(text, s)]
    if not missing and not present:
        return Outcome(True, f"{len(rec.facts)} facts, {len(rec.episodes)} episodes")
    why = ([f"missing {missing}"] if missing else []) + ([f"found unwanted {present}"] if present else [])
    return Outcome(False, f"{', '.join(why)}; recalled: {_listing(_short(i) for i in items)}")


def _short(text: str, n: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def check_reply(ctx: CheckContext, exp: ReplyExpect) -> Outcome:
    user = ctx.user_of(exp)
    if exp.remember:
        reply = _remembered_reply(ctx, user, exp.to)
    else:
        reply = probe_reply(ctx.stack, user, exp.to, session_id=ctx.session.session_id)
    return _texts_outcome(reply, exp.contains, exp.contains_any, exp.not_contains, "reply")


def _remembered_reply(ctx: CheckContext, user: str, text: str) -> str:
    """``remember: true``: a real turn of the session (its events count for later ``drift`` checks)."""
    import time

    start = time.perf_counter()
    result = ctx.stack.agent.chat(user, text, session_id=ctx.session.session_id)
    ctx.turns.append(TurnRecord(user, text, result.reply, tuple(result.events), tuple(result.jobs),
                                ctx.stack.memory.clock.now(), time.perf_counter() - start))
    return result.reply


def probe_reply(stack: "Stack", user: str, text: str, *, session_id: str) -> str:
    """The agent's reply to ``text`` in ``session_id`` with no trace in memory or in the conversation thread.

    The same prompt the ``respond`` node builds (profile + retrieval notes, the thread's history, today's
    date), but retrieval goes through the read-only retriever and nothing is remembered or checkpointed.
    """
    from agent.prompt import build_prompt

    memory, agent = stack.memory, stack.agent
    rec = memory.retriever.retrieve(user, text)
    history: list[BaseMessage] = list(agent.last_turn(user, session_id).get("messages", []))
    count = stack.local.count_tokens if stack.local is not None else (lambda s: max(1, len(s) // 4))
    built = build_prompt(user_id=user, message=text, recollection=rec, history=history, count_tokens=count,
                         now=memory.clock.now())
    per_user = {"user_id": user} if stack.local is not None else {}  # the user's adapter, as in the respond node
    return str(agent.chat_model.invoke(built.messages, **per_user).content)


def check_drift(ctx: CheckContext, exp: DriftExpect) -> Outcome:
    changes = ctx.changes(ctx.user_of(exp))
    relation = normalize_relation(exp.relation)[0] if exp.relation else None
    hits = [c for c in changes
            if (relation is None or relation in c.relations)
            and (exp.dimension is None or c.dimension == exp.dimension)
            and (exp.object_from is None or (c.object_from is not None and _has(c.object_from, exp.object_from)))
            and (exp.object_to is None or (c.object_to is not None and _has(c.object_to, exp.object_to)))]
    if hits:
        return Outcome(True, _listing(c.describe() for c in hits))
    return Outcome(False, f"changes in this session: {_listing((c.describe() for c in changes), 'none')}")


def check_weight(ctx: CheckContext, exp: WeightExpect) -> Outcome:
    w = ctx.stack.memory.preference_weights(ctx.user_of(exp))[exp.dimension]
    sign = 0 if w.weight == 0 else (1 if w.weight > 0 else -1)
    basis = (f"statement {w.statement:+.2f}, feedback {w.feedback:+.2f} from {w.ratings} rated repl"
             f"{'y' if w.ratings == 1 else 'ies'}")
    return Outcome(sign == exp.sign, f"{exp.dimension} weight {w.weight:+.2f} ({w.pole or 'no preference'}; {basis})"
                   + ("" if sign == exp.sign else f"; wanted sign {exp.sign:+d}"))


def check_memory_size(ctx: CheckContext, exp: MemorySizeExpect) -> Outcome:
    count = ctx.stack.memory.indexed_count(ctx.user_of(exp))
    return Outcome(count <= exp.max_episodes, f"{count} episodes indexed (at most {exp.max_episodes} expected)")


# How long a model-level check waits for the update worker to finish the jobs queued so far.
MODEL_JOBS_TIMEOUT_S = 900.0
_PROBE = GenerationSettings(max_new_tokens=32)


def _user_view(ctx: CheckContext, user: str) -> "tuple[Any, Outcome | None]":
    """(the user's published view or None, a failing Outcome when the check cannot run)."""
    stack = ctx.stack
    if stack.local is None:
        return None, Outcome(False, "closed-book checks need pllm's local model (this stack uses another chat model)")
    watcher = stack.agent.worker.handlers.get("adapter_refresh")
    if hasattr(watcher, "wait_idle"):  # turns still being scored may yet queue a refresh
        watcher.wait_idle(MODEL_JOBS_TIMEOUT_S)
    if not stack.agent.worker.wait_idle(MODEL_JOBS_TIMEOUT_S):
        return None, Outcome(False, f"model-update jobs still running after {MODEL_JOBS_TIMEOUT_S:.0f} s")
    return stack.agent.chat_model.view_for(user), None  # type: ignore[attr-defined]


def _failed_jobs(ctx: CheckContext, user: str) -> str:
    failed = [r for r in ctx.stack.agent.worker.store.list(user, states=("failed",), limit=3)]  # type: ignore[union-attr]
    return "; failed jobs: " + _listing(f"{r.kind}: {r.error}" for r in failed) if failed else ""


def _texts_outcome(text: str, contains: Sequence[str], contains_any: Sequence[str], not_contains: Sequence[str],
                   what: str) -> Outcome:
    missing = [s for s in contains if not _has(text, s)]
    none_of = list(contains_any) if contains_any and not any(_has(text, s) for s in contains_any) else []
    present = [s for s in not_contains if _has(text, s)]
    shown = repr(_short(text, 160))
    if not (missing or none_of or present):
        return Outcome(True, f"{what} {shown}")
    why = ([f"missing {missing}"] if missing else []) + ([f"none of {none_of}"] if none_of else []) \
        + ([f"found unwanted {present}"] if present else [])
    return Outcome(False, f"{', '.join(why)} in {what} {shown}")


def check_closed_book(ctx: CheckContext, exp: ClosedBookExpect) -> Outcome:
    user = ctx.user_of(exp)
    view, problem = _user_view(ctx, user)
    if problem is not None:
        return problem
    answer = ctx.stack.local.generate([{"role": "user", "content": exp.ask}], _PROBE, view=view)  # type: ignore[union-attr]
    where = f"v{view.version}" if view is not None else "base model (no adapter published)"
    out = _texts_outcome(answer, exp.contains, exp.contains_any, exp.not_contains, f"closed-book answer ({where})")
    return out if out.passed else Outcome(False, out.detail + _failed_jobs(ctx, user))


def check_edit(ctx: CheckContext, exp: EditExpect) -> Outcome:
    user = ctx.user_of(exp)
    view, problem = _user_view(ctx, user)
    if problem is not None:
        return problem
    text = ctx.stack.local.complete(exp.prompt, GenerationSettings(max_new_tokens=16), view=view)  # type: ignore[union-attr]
    out = _texts_outcome(text, (exp.target,), (), (), "continuation")
    return out if out.passed else Outcome(False, out.detail + _failed_jobs(ctx, user))


def check_adapter(ctx: CheckContext, exp: AdapterExpect) -> Outcome:
    """The user's published adapter holds a layer of ``adapter_kind``: ``edits`` (at least one knowledge edit, in
    adapter version ``min_version`` or later), ``style`` (a style layer of version ``min_version`` or later) or
    ``preference`` (a merged preference layer, in adapter version ``min_version`` or later)."""
    from agent.model_level import adapter_store

    user = ctx.user_of(exp)
    view, problem = _user_view(ctx, user)
    if problem is not None:
        return problem
    info = next((v for v in adapter_store(ctx.stack.settings.home).versions(user) if v.published), None)
    if view is None or info is None:
        return Outcome(False, "no adapter published for the user (the base model serves them)" + _failed_jobs(ctx, user))
    if exp.adapter_kind == "edits":
        n, number = len(info.extra.get("edits", [])), info.version
        ok = n > 0 and number >= exp.min_version
        detail = f"adapter v{number} with {n} edit(s)"
    elif exp.adapter_kind == "preference":
        pref = info.extra.get("preference") if isinstance(info.extra.get("preference"), dict) else {}
        mix, merged = pref.get("mix") or {}, pref.get("merged") or []
        ok = bool(merged) and info.version >= exp.min_version
        detail = (f"adapter v{info.version} with preference layer "
                  + (", ".join(f"{k} × {mix[k]:.2f}" for k in merged) if merged else "none")
                  + ("" if mix else " (style weights all 0)"))
        if pref.get("missing_poles"):
            detail += f"; poles not trained for this base model: {pref['missing_poles']} (run `pllm align train`)"
    else:
        number = info.extra.get("style_version")
        ok = isinstance(number, int) and number >= exp.min_version
        detail = f"adapter v{info.version} with style layer {'v' + str(number) if number else 'none'}"
    return Outcome(ok, detail + ("" if ok else f" (wanted {exp.adapter_kind} v{exp.min_version} or later)"
                                 + _failed_jobs(ctx, user)))


def not_supported(ctx: CheckContext, exp: Expectation) -> Outcome:
    """For an expectation kind whose check does not exist yet (put it in :data:`CHECKS` in its place)."""
    return Outcome(False, NOT_SUPPORTED, unsupported=True)


CHECKS: dict[str, Check] = {
    "fact": check_fact,
    "no_fact": check_no_fact,
    "recall": check_recall,
    "reply": check_reply,
    "drift": check_drift,
    "memory_size": check_memory_size,
    "weight": check_weight,
    "edit": check_edit,
    "closed_book": check_closed_book,
    "adapter": check_adapter,
}


def check(ctx: CheckContext, exp: Expectation) -> Outcome:
    """Run the check registered for ``exp.kind``."""
    try:
        fn = CHECKS[exp.kind]
    except KeyError:
        raise KeyError(f"no check is registered for expectation kind {exp.kind!r}; add one to CHECKS") from None
    return fn(ctx, exp)
