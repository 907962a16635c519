"""Shared fixtures: the real local model and the real embedder, loaded once per test session.

The hub is forced offline for the whole run; every model comes from a package on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
# Knowledge edits (seconds each, on a background worker) run only where a test asks for them
# (Settings(model_updates=True), or a scenario with edit/closed_book checks, which turns them on itself).
os.environ["PLLM_MODEL_UPDATES"] = "0"

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Where the converted default model lives for tests (kept between runs; converted on first use)."""
    return Path(os.environ.get("PLLM_TEST_MODEL_CACHE", REPO / ".pllm-test-cache" / "models"))


# PLLM_TEST_DEVICE=cuda (or any torch device) runs the tiny-model tests there (tests/editing/conftest.py) and loads
# the real model there too. It is how the editing code is checked on a GPU machine: bench/gpu_check.sh.
TEST_DEVICE = os.environ.get("PLLM_TEST_DEVICE") or None


@pytest.fixture(scope="session")
def local_model(model_cache_dir: Path):  # -> editing.LocalModel
    """The real default chat model (SmolLM2-135M-Instruct), loaded once."""
    from editing import LocalModel, ModelNotFound, RuntimeConfig

    try:
        return LocalModel.load(RuntimeConfig(cache_dir=model_cache_dir, device=TEST_DEVICE))
    except ModelNotFound as exc:
        if TEST_DEVICE is None:  # the normal suite needs the real model: `make install` puts it there
            raise
        pytest.skip(f"PLLM_TEST_DEVICE={TEST_DEVICE} and the packaged model is not installed here: {exc}")


@pytest.fixture(scope="session")
def embedder():  # -> memory.MiniLMEmbedder
    """The real packaged all-MiniLM-L6-v2, loaded once."""
    from memory import MiniLMEmbedder

    emb = MiniLMEmbedder()
    emb.embed(["warm-up"])
    return emb
