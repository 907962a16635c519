"""`pllm info` and `pllm generate` as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app


@pytest.fixture()
def cli_env(tmp_path: Path, model_cache_dir: Path, local_model) -> dict[str, str]:
    # local_model: makes sure the converted cache exists before the CLI loads from it
    return {"PLLM_HOME": str(tmp_path / "home"), "PLLM_MODEL_CACHE": str(model_cache_dir)}


def test_info_reports_versions_device_and_cache(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["info"], env=cli_env)
    assert result.exit_code == 0, result.output
    for expected in ("torch", "transformers", "chromadb", "langgraph", "device", "ready"):
        assert expected in result.output


def test_generate_streams_an_answer(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["generate", "What is the capital of France?", "--max-new-tokens", "20"], env=cli_env)
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output


def test_generate_with_a_missing_model_fails_clearly(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", "hi", "--model", str(tmp_path / "nope")], env=cli_env)
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_chat_as_a_user_types_it(cli_env: dict[str, str], tmp_path: Path) -> None:
    export = tmp_path / "sam.json"
    typed = "\n".join(["I live in Porto and I love jazz.", "/memory", f"/export {export}", "/forget", "/memory", "/quit"]) + "\n"
    result = CliRunner().invoke(app, ["chat", "--user", "sam", "--max-new-tokens", "8"], input=typed, env=cli_env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "memory + lives in: Porto" in out and "memory + likes: jazz" in out  # change events shown after the reply
    first_table, _, after_forget = out.partition("forgot everything about sam")
    assert "lives in: Porto" in first_table
    assert "lives in: Porto" not in after_forget  # /forget erased it
    import json

    doc = json.loads(export.read_text())
    assert doc["user_id"] == "sam" and any("Porto" in e["text"] for e in doc["episodes"])


def test_memory_commands_show_export_and_forget(cli_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(app, ["chat", "--user", "ann", "--max-new-tokens", "4"], input="My name is Ann and I live in Turin.\n/quit\n",
                  env=cli_env)
    shown = runner.invoke(app, ["memory", "show", "--user", "ann"], env=cli_env)
    assert shown.exit_code == 0 and "lives in: Turin" in shown.output
    out = tmp_path / "ann.json"
    assert runner.invoke(app, ["memory", "export", "--user", "ann", "--out", str(out)], env=cli_env).exit_code == 0
    assert "Turin" in out.read_text()
    forgot = runner.invoke(app, ["memory", "forget", "--user", "ann", "--yes"], env=cli_env)
    assert forgot.exit_code == 0 and "threads 1" in forgot.output  # the conversation thread went too
    assert "lives in: Turin" not in runner.invoke(app, ["memory", "show", "--user", "ann"], env=cli_env).output
    missing = runner.invoke(app, ["memory", "export", "--user", "nobody"], env=cli_env)
    assert "no memories are stored" in missing.output


@pytest.mark.slow
def test_demo_runs_three_sessions_and_replaces_the_preference(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["demo", "--max-new-tokens", "6"], env=cli_env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("session ") >= 3
    assert "memory - likes: espresso (no longer true)" in out and "memory + likes: green tea" in out
    session3 = out.split("session 3")[1]
    assert "I like green tea." in session3 and "I like espresso." not in session3
