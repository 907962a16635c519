"""Configuration of the memory layer (one dataclass, validated on construction, never read at import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MemoryConfig"]


@dataclass(frozen=True)
class MemoryConfig:
    """Where memory lives and how it behaves.

    On disk under ``home``: ``chroma/`` (embedded Chroma, unless ``chroma_url`` is set),
    ``memory.sqlite`` (episodes, the knowledge-graph event log, per-user write versions),
    ``journal.sqlite`` (the crash journal), ``writers/`` (one lock per live writable ``Memory``) and, for
    an embedded home, ``writer.lock`` + ``writer.json`` (the one writing process and who it is).
    """

    home: Path
    chroma_url: str | None = None  # e.g. "http://127.0.0.1:8000" → chromadb.HttpClient
    collection_prefix: str = "pllm"
    max_episodes_per_user: int = 10_000  # past it, the weakest episodes are evicted (facts never are)
    recall_k: int = 8  # episodes returned by recall()
    fact_k: int = 8  # relevant facts/preferences returned by recall()
    summary_k: int = 3  # session summaries returned by recall() (0: none)
    half_life_days: float = 30.0  # initial memory stability; grows with each recall
    rrf_k: int = 10  # reciprocal-rank-fusion constant (RetrievalWeights.rrf_k overrides it when set)
    busy_timeout_s: float = 30.0  # how long a SQLite write waits for another process's transaction

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.max_episodes_per_user < 1:
            raise ValueError(f"max_episodes_per_user must be >= 1, got {self.max_episodes_per_user}")
        for name in ("recall_k", "fact_k", "rrf_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.summary_k, bool) or not isinstance(self.summary_k, int) or self.summary_k < 0:
            raise ValueError(f"summary_k must be an int >= 0, got {self.summary_k!r}")
        if self.half_life_days <= 0:
            raise ValueError(f"half_life_days must be > 0, got {self.half_life_days}")
        if isinstance(self.busy_timeout_s, bool) or not isinstance(self.busy_timeout_s, (int, float)) \
                or not 0 < self.busy_timeout_s <= 3600:
            raise ValueError(f"busy_timeout_s must be a number of seconds in (0, 3600], got {self.busy_timeout_s!r}")
        if self.chroma_url is not None and not self.chroma_url.startswith(("http://", "https://")):
            raise ValueError(f"chroma_url must start with http:// or https://, got {self.chroma_url!r}")
        if not 3 <= len(self.collection_prefix) <= 40:
            raise ValueError("collection_prefix must be 3 to 40 characters (Chroma names need 3-512)")

    @property
    def sqlite_path(self) -> Path:
        return self.home / "memory.sqlite"

    @property
    def chroma_path(self) -> Path:
        return self.home / "chroma"
