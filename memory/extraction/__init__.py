"""Extraction: turn a message into candidate knowledge-graph edges.

``PatternExtractor`` (default) is offline and deterministic; ``LLMExtractor`` asks any LangChain chat model
for structured output. Both satisfy the one-method :class:`Extractor` protocol. ``LLMExtractor`` is
imported lazily (it pulls in langchain-core and pydantic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory.extraction.base import USER_SUBJECTS, Candidate, Extractor
from memory.extraction.patterns import PatternExtractor

if TYPE_CHECKING:  # pragma: no cover
    from memory.extraction.llm import LLMExtractor

__all__ = ["Candidate", "Extractor", "LLMExtractor", "PatternExtractor", "USER_SUBJECTS"]


def __getattr__(name: str) -> Any:
    if name == "LLMExtractor":
        from memory.extraction.llm import LLMExtractor

        return LLMExtractor
    raise AttributeError(f"module 'memory.extraction' has no attribute {name!r}")
