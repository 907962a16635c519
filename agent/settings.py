"""One settings object for pllm, read from ``PLLM_*`` environment variables and CLI flags when a command
runs — never at import.

One folder layout under the home, whichever way pllm is used (CLI, :class:`Settings`, or
``memory.Memory(MemoryConfig(home=HOME))``)::

    HOME/memory.sqlite  HOME/journal.sqlite  HOME/chroma/   memory (see memory.MemoryConfig)
    HOME/checkpoints.sqlite                                  conversation threads (LangGraph)
    HOME/models/                                             converted models
    HOME/history/                                            the CLI's line-editing history, one file per user
    HOME/jobs.sqlite  HOME/edits.sqlite  HOME/edits/  HOME/adapters/   model level (see agent.model_level)

Earlier builds of pllm kept the memory files one level down, in ``HOME/memory/``; :func:`migrate_legacy_layout` moves
them up (the CLI does it on start), :meth:`Settings.memory_config` warns while they are still there.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_cache_dir
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.errors import AgentError
from editing import GenerationSettings, RuntimeConfig
from memory import MemoryConfig

__all__ = ["HomeLayoutError", "Settings", "legacy_memory_files", "migrate_legacy_layout"]

log = logging.getLogger(__name__)

# What memory.Memory keeps under its home (the SQLite files with their WAL companions).
_MEMORY_FILES = tuple(f"{db}{suffix}" for db in ("memory.sqlite", "journal.sqlite") for suffix in ("", "-wal", "-shm")) \
    + ("chroma",)
# Lock files a writable Memory leaves beside its data: meaningful only to a live writer, never moved.
_LOCK_LEFTOVERS = ("writer.lock", "writer.json", "writers")
LEGACY_MEMORY_DIR = "memory"


class HomeLayoutError(AgentError):
    """The home holds memory in both the old (``HOME/memory/``) and the current layout; nothing was moved."""


def _default_home() -> Path:
    return Path(user_cache_dir("pllm", appauthor=False))


def legacy_memory_files(home: Path) -> list[Path]:
    """Memory files still in the old place ``HOME/memory/`` (empty when the home is current)."""
    old = home / LEGACY_MEMORY_DIR
    return [old / name for name in _MEMORY_FILES if (old / name).exists()]


def _move_commands(home: Path, files: list[Path]) -> str:
    moves = [f"mv {shlex.quote(str(p))} {shlex.quote(str(home))}/" for p in files]
    return "; ".join([*moves, f"rmdir {shlex.quote(str(home / LEGACY_MEMORY_DIR))}"])


def migrate_legacy_layout(home: Path) -> list[Path]:
    """Move memory files from ``HOME/memory/`` up into ``HOME``; returns where they were.

    Each file or folder is renamed whole (a rename within one folder tree cannot half-happen), so an
    interrupted migration simply resumes on the next call. When a file exists in both places nothing is
    moved and :class:`HomeLayoutError` says which, with the commands to finish by hand.
    """
    files = legacy_memory_files(home)
    clashes = [p.name for p in files if (home / p.name).exists()]
    if clashes:
        raise HomeLayoutError(
            f"{home} has memory in two layouts: {', '.join(clashes)} exist both in {home / LEGACY_MEMORY_DIR} (old) "
            f"and in {home} (current); nothing was moved. Keep one: remove the ones you do not want, then "
            f"move the old ones up: {_move_commands(home, files)}")
    for p in files:
        p.rename(home / p.name)
    if files:
        for name in _LOCK_LEFTOVERS:
            leftover = home / LEGACY_MEMORY_DIR / name
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        try:
            (home / LEGACY_MEMORY_DIR).rmdir()
        except OSError:  # something else lives there; leave it
            pass
    return files


class Settings(BaseSettings):
    """Everything a pllm process needs to know; build it with ``Settings()`` (env) or ``Settings(home=...)``."""

    model_config = SettingsConfigDict(env_prefix="PLLM_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="all on-disk state: models, memory, checkpoints")
    model: str | None = Field(default=None, description="model folder, .gguf file or cached hub id; None = packaged SmolLM2")
    model_cache: Path | None = Field(default=None, description="where converted models live (default: HOME/models)")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1, mps or auto")
    dtype: str | None = Field(default=None, description="float32, bfloat16, float16 or auto")
    threads: int | None = Field(default=None, ge=1)
    prefix_cache_mb: int = Field(default=256, ge=0, description="memory for recent prompts' KV, reused by later "
                                 "prompts that start the same way (0: off)")
    chroma_url: str | None = Field(default=None, description="http://host:port of a Chroma server; None = embedded")
    postgres_url: str | None = Field(default=None, description="checkpointer DSN; None = SQLite under HOME")
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    repetition_penalty: float = Field(default=1.15, gt=0.0, description="> 1 discourages loops in small models")
    model_updates: bool = Field(default=True, description="run model-level jobs (knowledge edits into each user's "
                                "adapter) on a background worker; off: input-level personalization only")
    adapter_refresh_every: int = Field(default=50, ge=0, description="refresh a user's style adapter after this "
                                       "many new turns (0: off)")
    style_merge: Literal["cat", "svd", "mod"] = Field(
        default="cat", description="how a user's style poles are combined: 'cat' (exact weighted sum in the "
        "published adapter), 'svd' (the same, folded to a lower rank) or 'mod' (fused at decoding time, one "
        "extra decode row per pole)")
    style_watch: bool = Field(default=True, description="watch each turn's perplexity under the user's adapter and "
                              "refresh it when the user's language drifts")

    @field_validator("home", "model_cache", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, (str, Path)) else value

    @field_validator("device", "dtype")
    @classmethod
    def _known_placement(cls, value: str | None, info: Any) -> str | None:
        if value in (None, "", "auto"):
            return value  # (no torch import for the default)
        from editing.device import device_problem

        problem = device_problem(**{info.field_name: value})
        if problem is not None:
            raise ValueError(problem)
        return value

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(model=self.model, cache_dir=self.model_cache or self.home / "models",
                             device=self.device, dtype=self.dtype, threads=self.threads,
                             prefix_cache_mb=self.prefix_cache_mb)

    def memory_config(self) -> MemoryConfig:
        """Memory directly under the home — the same files ``Memory(MemoryConfig(home=HOME))`` uses."""
        legacy = legacy_memory_files(self.home)
        if legacy:
            log.warning("%s still has memory in the old layout (%s); pllm now reads it from %s. Run any `pllm` "
                        "command with --home %s to move it, or move it yourself: %s", self.home,
                        self.home / LEGACY_MEMORY_DIR, self.home, self.home, _move_commands(self.home, legacy))
        return MemoryConfig(home=self.home, chroma_url=self.chroma_url)

    def generation(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  repetition_penalty=self.repetition_penalty)
