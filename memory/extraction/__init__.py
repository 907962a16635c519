"""Extraction: turn a message into candidate knowledge-graph edges.

``SpeechExtractor`` (the default, :func:`default_extractor`) reads ordinary speech through spaCy's
dependency parse and the patterns; ``PatternExtractor`` is the regex core it builds on (offline,
deterministic, sub-millisecond); ``LLMExtractor`` asks any LangChain chat model for structured output.
All satisfy the one-method :class:`Extractor` protocol. ``SpeechExtractor`` and ``LLMExtractor`` are
imported lazily (spaCy; langchain-core and pydantic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory.extraction.base import USER_SUBJECTS, Candidate, Extractor
from memory.extraction.patterns import PatternExtractor

if TYPE_CHECKING:  # pragma: no cover
    from memory.extraction.llm import LLMExtractor
    from memory.extraction.speech import SpeechExtractor

__all__ = ["Candidate", "Extractor", "LLMExtractor", "PatternExtractor", "SpeechExtractor", "USER_SUBJECTS",
           "default_extractor"]


def default_extractor() -> Extractor:
    """The extractor ``Memory`` uses when given none: :class:`SpeechExtractor` (spaCy loads on first use)."""
    from memory.extraction.speech import SpeechExtractor

    return SpeechExtractor()


def __getattr__(name: str) -> Any:
    if name == "LLMExtractor":
        from memory.extraction.llm import LLMExtractor

        return LLMExtractor
    if name == "SpeechExtractor":
        from memory.extraction.speech import SpeechExtractor

        return SpeechExtractor
    raise AttributeError(f"module 'memory.extraction' has no attribute {name!r}")
