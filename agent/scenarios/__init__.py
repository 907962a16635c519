"""Scripted lifelong-learning scenarios: a YAML format, a runner over the real stack, reports, a CLI and
a pytest plugin.

Importing this package does no I/O; public names resolve lazily on first access.

    from agent.scenarios import ScenarioRunner, load_scenario
    result = ScenarioRunner().run(load_scenario("tests/scenarios/recall_across_sessions.yaml"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from agent.scenarios.expectations import CHECKS, NOT_SUPPORTED, CheckContext, Outcome
    from agent.scenarios.format import Scenario, ScenarioFormatError, load_scenario, parse_scenario
    from agent.scenarios.report import write_report
    from agent.scenarios.runner import ExpectationResult, RunOptions, ScenarioResult, ScenarioRunner, scenario_files

_EXPORTS = {
    "CHECKS": "agent.scenarios.expectations",
    "NOT_SUPPORTED": "agent.scenarios.expectations",
    "CheckContext": "agent.scenarios.expectations",
    "Outcome": "agent.scenarios.expectations",
    "Scenario": "agent.scenarios.format",
    "ScenarioFormatError": "agent.scenarios.format",
    "load_scenario": "agent.scenarios.format",
    "parse_scenario": "agent.scenarios.format",
    "write_report": "agent.scenarios.report",
    "ExpectationResult": "agent.scenarios.runner",
    "RunOptions": "agent.scenarios.runner",
    "ScenarioResult": "agent.scenarios.runner",
    "ScenarioRunner": "agent.scenarios.runner",
    "scenario_files": "agent.scenarios.runner",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
