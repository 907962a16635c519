"""Run scenarios against the real stack: memory, knowledge graph, agent and the local model.

Each scenario runs in a fresh pllm home (a temporary folder, removed afterwards) with its own
:class:`memory.ManualClock`, which every component reads; the local model is loaded once per
:class:`ScenarioRunner` and shared. Per session, in this order:

1. the clock jumps to the session's ``at``;
2. each turn runs through :meth:`agent.graph.PersonalAgent.chat` (recall → respond → remember → adapt)
   with the session id ``s0001``, ``s0002``, … (turns with ``as:`` run as that user);
3. ``forget`` (extension) removes those users: their memory and their conversation threads;
4. ``wait_for_updates`` waits until the model-update jobs submitted so far have finished — never longer;
5. the expectations are checked in order (:mod:`agent.scenarios.expectations`).

A turn's ``feedback`` rates that turn's reply (:meth:`agent.graph.PersonalAgent.rate`): it is stored with
the user's memory, where the style adapter's refresh takes the replies rated up as training targets. A
scenario that raises stops there: its remaining expectations are reported as failed with the error, and the
runner goes on with the next scenario.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.scenarios.expectations import Change, CheckContext, Outcome, TurnRecord, changes_of, check
from agent.scenarios.format import Expectation, Scenario, Session, load_scenario
from agent.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from editing import LocalModel
    from memory import Embedder, Fact

    from agent.stack import Stack

__all__ = ["ExpectationResult", "RunOptions", "ScenarioResult", "ScenarioRunner", "SessionRecord", "Timeline",
           "scenario_files"]

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 24


# Expectation kinds that read the user's model (they turn the stack's model updates on).
MODEL_LEVEL_KINDS = frozenset({"edit", "closed_book", "adapter"})


@dataclass(frozen=True)
class RunOptions:
    """How scenarios run. ``max_new_tokens`` caps every reply (a scenario may ask for fewer)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    keep_homes: Path | None = None  # keep each scenario's home under this folder instead of deleting it

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class ExpectationResult:
    scenario: str
    session_index: int
    session_at: datetime
    expectation: Expectation
    passed: bool
    detail: str
    unsupported: bool = False
    seconds: float = 0.0

    @property
    def kind(self) -> str:
        return self.expectation.kind

    @property
    def label(self) -> str:
        """``session 3 · fact object='Oslo'`` — how reports and pytest name this check."""
        return f"session {self.session_index + 1} · {self.expectation.describe()}"


@dataclass(frozen=True)
class SessionRecord:
    index: int
    at: datetime
    session_id: str
    turns: tuple[TurnRecord, ...]
    forgotten: tuple[str, ...]
    results: tuple[ExpectationResult, ...]


@dataclass(frozen=True)
class Timeline:
    """The scenario user's facts over time, for the report: every fact (closed ones too) and every change."""

    user: str
    facts: tuple["Fact", ...]
    changes: tuple[Change, ...]
    session_times: tuple[datetime, ...]

    @property
    def end(self) -> datetime:
        return self.session_times[-1]


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    sessions: tuple[SessionRecord, ...]
    timeline: Timeline
    wall_s: float
    error: str | None = None  # set when the scenario stopped early
    skipped: tuple[ExpectationResult, ...] = ()  # expectations not reached because of ``error``

    @property
    def results(self) -> list[ExpectationResult]:
        """Every expectation in file order (those after an error are failed with it)."""
        return [r for s in self.sessions for r in s.results] + list(self.skipped)

    @property
    def passed(self) -> bool:
        return self.error is None and all(r.passed for r in self.results)

    @property
    def counts(self) -> tuple[int, int]:
        """(passed, total) expectations."""
        results = self.results
        return sum(r.passed for r in results), len(results)

    @property
    def turn_count(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


TurnHook = Callable[[Session, TurnRecord], None]
SessionHook = Callable[[SessionRecord], None]


class ScenarioRunner:
    """Runs scenarios, each in a fresh home, sharing one local model (loaded on first use)."""

    def __init__(self, *, local: "LocalModel | None" = None, settings: Settings | None = None,
                 options: RunOptions | None = None, embedder: "Embedder | None" = None) -> None:
        self.settings = settings or Settings()  # model location and runtime; the home is replaced per scenario
        self.options = options or RunOptions()
        self._local = local
        self._embedder = embedder

    @property
    def local(self) -> "LocalModel":
        if self._local is None:
            from editing import LocalModel

            self._local = LocalModel.load(self.settings.runtime_config())
        return self._local

    @property
    def embedder(self) -> "Embedder":
        if self._embedder is None:
            from memory import MiniLMEmbedder

            self._embedder = MiniLMEmbedder()
        return self._embedder

    def run_file(self, path: Path | str) -> ScenarioResult:
        return self.run(load_scenario(path))

    def run_many(self, scenarios: Iterable[Scenario]) -> Iterator[ScenarioResult]:
        for scenario in scenarios:
            yield self.run(scenario)

    def run(self, scenario: Scenario, *, on_turn: TurnHook | None = None,
            on_session: SessionHook | None = None) -> ScenarioResult:
        """Run one scenario from an empty memory; never raises for what happens inside it.

        ``on_turn(session, turn)`` is called after each turn and ``on_session(record)`` after each session
        (e.g. to narrate a run as it happens).
        """
        start = time.perf_counter()
        home = Path(tempfile.mkdtemp(prefix="pllm-scenario-", dir=self.options.keep_homes))
        try:
            stack = self._build(scenario, home)
            try:
                return self._drive(scenario, stack, start, on_turn, on_session)
            finally:
                _close(stack)
        finally:
            if self.options.keep_homes is None:
                shutil.rmtree(home, ignore_errors=True)
            else:
                log.info("kept the home of scenario %r at %s", scenario.name, home)

    # ------------------------------------------------------------------------------------ internals

    def _build(self, scenario: Scenario, home: Path) -> "Stack":
        """The scenario's stack under ``home``; model updates on only when it has ``edit``/``closed_book``/``adapter``
        checks."""
        from agent.stack import build_stack
        from memory import ManualClock

        tokens = min(self.options.max_new_tokens, scenario.max_new_tokens or self.options.max_new_tokens)
        # Knowledge edits cost seconds each: they run exactly for the scenarios that check the model level.
        model_level = any(e.kind in MODEL_LEVEL_KINDS for session in scenario.sessions for e in session.expect)
        settings = self.settings.model_copy(update={"home": home, "max_new_tokens": tokens,
                                                    "model_updates": model_level})
        clock = ManualClock(scenario.sessions[0].at)
        memory_config = replace(settings.memory_config(), **scenario.memory.overrides())
        return build_stack(settings, clock=clock, local=self.local, embedder=self.embedder, memory_config=memory_config)

    def _drive(self, scenario: Scenario, stack: "Stack", start: float, on_turn: TurnHook | None,
               on_session: SessionHook | None) -> ScenarioResult:
        records: list[SessionRecord] = []
        all_turns: list[TurnRecord] = []
        error: str | None = None
        for session in scenario.sessions:
            try:
                record = self._session(scenario, session, stack, on_turn)
            except Exception as exc:  # noqa: BLE001 - reported as the scenario's failure, with its cause
                log.exception("scenario %r stopped in session %d", scenario.name, session.index + 1)
                error = f"session {session.index + 1} (line {session.line}): {type(exc).__name__}: {exc}"
                break
            records.append(record)
            all_turns.extend(record.turns)
            if on_session is not None:
                on_session(record)
        timeline = _timeline(scenario, stack, all_turns)
        skipped = _not_reached(scenario, len(records), error) if error else ()
        return ScenarioResult(scenario, tuple(records), timeline, time.perf_counter() - start, error, skipped)

    def _session(self, scenario: Scenario, session: Session, stack: "Stack", on_turn: TurnHook | None) -> SessionRecord:
        clock = stack.memory.clock
        clock.set(session.at)  # type: ignore[attr-defined]  # a ManualClock (built in _build)
        sid = session.session_id
        turns: list[TurnRecord] = []
        for turn in session.turns:
            user = turn.user or scenario.user
            t0 = time.perf_counter()
            result = stack.agent.chat(user, turn.text, session_id=sid)
            events = list(result.events)
            if turn.feedback is not None and result.reply_id is not None:
                events += stack.agent.rate(user, turn.feedback, reply_id=result.reply_id, session_id=sid).events
            turns.append(TurnRecord(user, turn.text, result.reply, tuple(events), tuple(result.jobs),
                                    clock.now(), time.perf_counter() - t0, turn.feedback, turn.line))
            if on_turn is not None:
                on_turn(session, turns[-1])
            log.debug("%s s%d %s: %r → %r", scenario.name, session.index + 1, user, turn.text, result.reply)
        for user in session.forget:
            _forget(stack, user, scenario)
        if session.wait_for_updates:
            stack.agent.worker.wait_idle()
        ctx = CheckContext(stack, scenario, session, turns)
        results = tuple(_checked(scenario, session, ctx, exp) for exp in session.expect)
        return SessionRecord(session.index, session.at, sid, tuple(ctx.turns), session.forget, results)


def _checked(scenario: Scenario, session: Session, ctx: CheckContext, exp: Expectation) -> ExpectationResult:
    t0 = time.perf_counter()
    try:
        outcome = check(ctx, exp)
    except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed expectation, with the cause
        log.exception("checking %s failed", exp.describe())
        outcome = Outcome(False, f"the check raised {type(exc).__name__}: {exc}")
    return ExpectationResult(scenario.name, session.index, session.at, exp, outcome.passed, outcome.detail,
                             outcome.unsupported, time.perf_counter() - t0)


def _not_reached(scenario: Scenario, done: int, error: str) -> tuple[ExpectationResult, ...]:
    return tuple(ExpectationResult(scenario.name, s.index, s.at, e, False, f"not checked: the scenario stopped in {error}")
                 for s in scenario.sessions[done:] for e in s.expect)


def _forget(stack: "Stack", user: str, scenario: Scenario) -> None:
    """Forget ``user``: memory (episodes, facts, graph log) and the conversation threads of this run."""
    removed = stack.agent.forget(user)  # memory and the user's conversation threads
    log.info("forgot %s: %s", user, removed)


def _timeline(scenario: Scenario, stack: "Stack", turns: list[TurnRecord]) -> Timeline:
    user = scenario.user
    facts = tuple(stack.memory.facts(user, include_superseded=True))
    changes = tuple(c for t in turns if t.user == user for c in changes_of(user, t.events, t.at))
    return Timeline(user, facts, changes, tuple(s.at for s in scenario.sessions))


def _close(stack: "Stack") -> None:
    stack.close()


def scenario_files(paths: Iterable[Path | str]) -> list[Path]:
    """The scenario files named by ``paths``: files as given, folders searched for ``*.yaml``/``*.yml``
    that look like scenarios (a top-level ``sessions:``), sorted."""
    from agent.scenarios.format import looks_like_scenario

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file())
            out.extend(f for f in found if looks_like_scenario(f.read_text(encoding="utf-8", errors="replace")))
        else:
            out.append(p)
    return out
