"""One settings object for pllm, read from ``PLLM_*`` environment variables and CLI flags when a command
runs — never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from editing import GenerationSettings, RuntimeConfig
from memory import MemoryConfig

__all__ = ["Settings"]


def _default_home() -> Path:
    return Path(user_cache_dir("pllm", appauthor=False))


class Settings(BaseSettings):
    """Everything a pllm process needs to know; build it with ``Settings()`` (env) or ``Settings(home=...)``."""

    model_config = SettingsConfigDict(env_prefix="PLLM_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="all on-disk state: models, memory, checkpoints")
    model: str | None = Field(default=None, description="model folder, .gguf file or cached hub id; None = packaged SmolLM2")
    model_cache: Path | None = Field(default=None, description="where converted models live (default: HOME/models)")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1, mps or auto")
    dtype: str | None = Field(default=None, description="float32, bfloat16, float16 or auto")
    threads: int | None = Field(default=None, ge=1)
    chroma_url: str | None = Field(default=None, description="http://host:port of a Chroma server; None = embedded")
    postgres_url: str | None = Field(default=None, description="checkpointer DSN; None = SQLite under HOME")
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    repetition_penalty: float = Field(default=1.15, gt=0.0, description="> 1 discourages loops in small models")

    @field_validator("home", "model_cache", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, (str, Path)) else value

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(model=self.model, cache_dir=self.model_cache or self.home / "models",
                             device=self.device, dtype=self.dtype, threads=self.threads)

    def memory_config(self) -> MemoryConfig:
        return MemoryConfig(home=self.home / "memory", chroma_url=self.chroma_url)

    def generation(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  repetition_penalty=self.repetition_penalty)
