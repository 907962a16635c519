"""pytest plugin: YAML scenarios as tests, one test item per expectation.

Registered as the ``pllm_scenarios`` entry point (``pytest11``), so it is active wherever pllm is
installed; ``-p no:pllm_scenarios`` turns it off. A YAML file is collected when it has a top-level
``sessions:`` key and it lies under one of the ``pllm_scenario_dirs`` (ini option, default
``tests/scenarios``, relative to the rootdir) or was named — it or a folder above it — on the command
line. Unrelated YAML is never touched.

Each scenario runs once (when its first item runs), in a fresh pllm home; its items then report their
own expectation. Items carry the mark ``scenario`` plus the scenario's ``tags`` (e.g. ``slow``).

The runner comes from the session fixture ``pllm_scenario_runner``: it reuses the project's
``local_model`` and ``embedder`` fixtures when they exist (so the model is loaded once per test run),
and otherwise loads the model from :class:`agent.settings.Settings` (``PLLM_MODEL``,
``PLLM_MODEL_CACHE``, ``PLLM_HOME``). ``--scenario-max-new-tokens N`` caps replies (default 24).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from _pytest._code.code import ExceptionInfo, TerminalRepr

    from agent.scenarios.format import Expectation, Scenario, Session
    from agent.scenarios.runner import ScenarioResult, ScenarioRunner

DEFAULT_DIRS = ("tests/scenarios",)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pllm scenarios")
    group.addoption("--scenario-max-new-tokens", type=int, default=None, metavar="N",
                    help="cap on reply length in YAML scenarios (default 24)")
    parser.addini("pllm_scenario_dirs", type="linelist", default=list(DEFAULT_DIRS),
                  help="folders (relative to the rootdir) whose *.yaml scenarios are collected")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario: one expectation of a pllm YAML scenario")


def _named_on_command_line(path: Path, config: pytest.Config) -> bool:
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return False
    base = config.invocation_params.dir
    for arg in config.args:
        target = (base / arg.split("::")[0]).resolve()
        if path == target or target in path.parents:
            return True
    return False


def _wanted(path: Path, config: pytest.Config) -> bool:
    path = path.resolve()
    dirs = [(config.rootpath / d).resolve() for d in config.getini("pllm_scenario_dirs")]
    return any(d in path.parents for d in dirs) or _named_on_command_line(path, config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml") or not _wanted(file_path, parent.config):
        return None
    from agent.scenarios.format import looks_like_scenario

    if not looks_like_scenario(file_path.read_text(encoding="utf-8", errors="replace")):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


@pytest.fixture(scope="session")
def pllm_scenario_runner(request: pytest.FixtureRequest) -> "ScenarioRunner":
    """The runner every scenario item uses (one local model for the whole test session)."""
    from agent.scenarios.runner import DEFAULT_MAX_NEW_TOKENS, RunOptions, ScenarioRunner
    from editing import LocalModel
    from memory import Embedder

    local = _optional_fixture(request, "local_model")
    embedder = _optional_fixture(request, "embedder")
    tokens = request.config.getoption("scenario_max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    return ScenarioRunner(local=local if isinstance(local, LocalModel) else None,
                          embedder=embedder if isinstance(embedder, Embedder) else None,
                          options=RunOptions(max_new_tokens=tokens))


def _optional_fixture(request: pytest.FixtureRequest, name: str) -> Any:
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None


class ExpectationFailed(AssertionError):
    """An expectation of a scenario did not hold (rendered without a traceback)."""


class ScenarioFile(pytest.File):
    """A scenario YAML file: parsed at collection, run once when its first item runs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._outcome: ScenarioResult | BaseException | None = None

    def collect(self) -> list[pytest.Item]:
        from agent.scenarios.format import ScenarioFormatError, load_scenario

        try:
            self.scenario = load_scenario(self.path)
        except ScenarioFormatError as exc:
            raise self.CollectError(str(exc)) from None
        items: list[pytest.Item] = []
        seen: set[str] = set()
        for position, (session, exp) in enumerate(self.scenario.expectations):
            name = f"{exp.kind}[s{session.index + 1}-L{exp.line}]"
            if name in seen:
                name = f"{exp.kind}[s{session.index + 1}-L{exp.line}-{position}]"
            seen.add(name)
            items.append(ExpectationItem.from_parent(self, name=name, callobj=_uses_runner, position=position))
        return items

    def result(self, runner: "ScenarioRunner") -> "ScenarioResult":
        """Run the scenario on first call; later calls (and a failure to run) are cached."""
        if self._outcome is None:
            try:
                self._outcome = runner.run(self.scenario)
            except Exception as exc:  # noqa: BLE001 - every item of this file reports the same cause
                self._outcome = exc
        if isinstance(self._outcome, BaseException):
            raise RuntimeError(f"scenario {self.scenario.name!r} could not run: {self._outcome}") from self._outcome
        return self._outcome


def _uses_runner(pllm_scenario_runner: "ScenarioRunner") -> None:
    """The item's call signature: it asks pytest for the runner fixture (the check is ``runtest``)."""


class ExpectationItem(pytest.Function):
    """One expectation of a scenario; it passes or fails with that expectation's outcome."""

    def __init__(self, *, position: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.position = position
        scenario: Scenario = self.parent.scenario  # type: ignore[attr-defined]
        self.scenario_session, self.expectation = scenario.expectations[position]
        self.add_marker("scenario")
        for tag in scenario.tags:
            self.add_marker(tag)

    def runtest(self) -> None:
        parent: ScenarioFile = self.parent  # type: ignore[assignment]
        result = parent.result(self.funcargs["pllm_scenario_runner"])
        outcome = result.results[self.position]
        if not outcome.passed:
            raise ExpectationFailed(self._message(parent.scenario, self.scenario_session, self.expectation, outcome.detail))

    @staticmethod
    def _message(scenario: "Scenario", session: "Session", exp: "Expectation", detail: str) -> str:
        return (f"scenario {scenario.name!r}, session {session.index + 1} at {session.at:%Y-%m-%d %H:%M} "
                f"({scenario.source}:{exp.line})\n  expected: {exp.describe()}\n  found:    {detail}")

    def repr_failure(self, excinfo: "ExceptionInfo[BaseException]") -> "str | TerminalRepr":  # type: ignore[override]
        if isinstance(excinfo.value, ExpectationFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.expectation.line - 1, f"{self.parent.name}::{self.name}"
