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
