"""An extractor backed by any LangChain chat model (structured output when the model has it, else JSON).

The prompt is a pure function (:func:`extraction_prompt`) paired with a typed response model
(:class:`ExtractionResult`), so both are testable offline. Parsing never raises: a reply that is not
JSON yields ``[]``, an invalid item is dropped with a log line, and relations are normalized against the
schema (:func:`memory.relations.normalize_relation`; unknown relations are kept as lower snake_case).
Meant to run in the background: a chat-model call takes seconds, the pattern extractor microseconds.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from memory.extraction.base import USER_SUBJECTS, Candidate
from memory.relations import DIMENSIONS, POLARITY_RELATIONS, RELATIONS, normalize_relation

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage
    from langchain_core.runnables import Runnable

__all__ = ["ExtractedItem", "ExtractionResult", "LLMExtractor", "extraction_prompt", "parse_items"]

log = logging.getLogger(__name__)


class ExtractedItem(BaseModel):
    """One fact or preference the model found."""

    subject: str = Field(default="user", description='"user" for the speaker, otherwise the person\'s name')
    relation: str = Field(description="a relation from the list, in snake_case")
    object: str = Field(description="the value, short (1-5 words), as the user wrote it")
    kind: Literal["fact", "preference"] = "fact"
    polarity: Literal["likes", "dislikes"] | None = None
    category: str | None = Field(default=None, description='for favorite: "food", "color", ...')
    negated: bool = Field(default=False, description="true if the user says this is no longer true")


class ExtractionResult(BaseModel):
    """Everything the model found in one message (possibly nothing)."""

    items: list[ExtractedItem] = Field(default_factory=list)


_EXAMPLE = {"items": [
    {"subject": "user", "relation": "lives_in", "object": "Bergen", "kind": "fact"},
    {"subject": "user", "relation": "likes", "object": "coffee", "kind": "preference", "polarity": "likes",
     "negated": True},
    {"subject": "Anna", "relation": "works_as", "object": "doctor", "kind": "fact"},
]}


def extraction_prompt(text: str, *, role: str = "user", max_items: int = 10) -> list[BaseMessage]:
    """The messages that ask a chat model for the personal facts in ``text`` (a pure function)."""
    from langchain_core.messages import HumanMessage, SystemMessage

    relations = ", ".join(sorted(RELATIONS))
    poles = "; ".join(f"prefers_{d}: {a} or {b}" for d, (a, b) in DIMENSIONS.items())
    system = (
        "You extract lasting personal facts and preferences that a user states about themselves or people they "
        f"know. Relations: {relations}. Style preferences use {poles}. Use subject \"user\" for the speaker. "
        "Set negated=true when the user says something is no longer true. Ignore questions, hypotheticals and "
        f"other people's quoted words. At most {max_items} items. Reply with JSON only, like: "
        f"{json.dumps(_EXAMPLE)} — or {{\"items\": []}} if there is nothing."
    )
    example_in = "I moved to Bergen and I stopped drinking coffee. My sister Anna is a doctor."
    return [
        SystemMessage(system),
        HumanMessage(f"Message from the {role}: {example_in}"),
        SystemMessage(f"Answer: {json.dumps(_EXAMPLE)}"),
        HumanMessage(f"Message from the {role}: {text}"),
    ]


# ------------------------------------------------------------------------------------------ parsing

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_POLE_SYNONYMS = {
    "short": "concise", "brief": "concise", "terse": "concise", "long": "detailed", "verbose": "detailed",
    "thorough": "detailed", "informal": "casual", "relaxed": "casual", "professional": "formal",
    "beginner": "layperson", "novice": "layperson", "simple": "layperson", "technical": "expert", "advanced": "expert",
}


def _first_json(text: str) -> Any:
    """The first JSON object or array in ``text`` (code fences and surrounding prose tolerated), or None."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for chunk in candidates:
        for i, ch in enumerate(chunk):
            if ch in "[{":
                try:
                    return decoder.raw_decode(chunk, i)[0]
                except json.JSONDecodeError:
                    continue
    return None


def parse_items(reply: Any) -> list[dict[str, Any]]:
    """Raw item dicts from a reply: text (JSON somewhere in it), a dict ``{"items": [...]}``, or a list."""
    data = _first_json(reply) if isinstance(reply, str) else reply
    if isinstance(data, dict):
        for key in ("items", "facts", "results", "data"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data] if "relation" in data else []
    if not isinstance(data, list):
        return []
    return [item for item in data if isinstance(item, dict)]


def _to_candidate(raw: dict[str, Any]) -> Candidate | None:
    """Validate and normalize one item; None (with a log line) when it cannot be used."""
    try:
        item = ExtractedItem.model_validate(raw)
    except ValidationError as exc:
        log.info("dropping invalid extracted item %r: %s", raw, exc.errors()[0].get("msg"))
        return None
    subject, obj = item.subject.strip() or "user", item.object.strip()
    relation, implied_category = normalize_relation(item.relation)
    if not relation or not obj:
        log.info("dropping extracted item without relation or object: %r", raw)
        return None
    if relation in ("prefers", "preference") and item.polarity:
        relation = item.polarity
    spec = RELATIONS.get(relation)
    if spec is not None and spec.dimension is not None:
        obj = _POLE_SYNONYMS.get(obj.lower(), obj.lower())
        if obj not in DIMENSIONS[spec.dimension]:
            log.info("dropping %s=%r: not one of %s", relation, obj, DIMENSIONS[spec.dimension])
            return None
    kind = spec.kind if spec is not None else item.kind
    polarity = relation if relation in POLARITY_RELATIONS else (item.polarity if kind == "preference" else None)
    return Candidate(subject="user" if subject.casefold() in USER_SUBJECTS else subject, relation=relation,
                     object=obj, kind=kind, polarity=polarity,  # type: ignore[arg-type]
                     category=item.category or implied_category, negated=item.negated, confidence=0.7)


def _text_of(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


class LLMExtractor:
    """Ask a LangChain chat model for the personal facts in a message; never raises on a bad reply."""

    def __init__(self, chat_model: BaseChatModel, *, max_items: int = 10) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.chat_model = chat_model
        self.max_items = max_items
        self._structured: Runnable[Any, Any] | None = None
        try:  # models without tool calling raise NotImplementedError here; then we ask for JSON text
            self._structured = chat_model.with_structured_output(ExtractionResult, include_raw=True)
        except NotImplementedError:
            log.info("%s has no structured output; the extractor will ask for JSON", type(chat_model).__name__)

    def extract(self, text: str, *, role: str = "user") -> list[Candidate]:
        """Candidates from one message (only ``role="user"`` is read); ``[]`` when the model gives nothing usable."""
        if role != "user" or not isinstance(text, str) or not text.strip():
            return []
        messages = extraction_prompt(text, role=role, max_items=self.max_items)
        raw = self._ask_structured(messages) if self._structured is not None else None
        if raw is None:
            raw = self._ask_json(messages)
        candidates = [c for c in (_to_candidate(item) for item in raw) if c is not None]
        return candidates[: self.max_items]

    def _ask_structured(self, messages: list[BaseMessage]) -> list[dict[str, Any]] | None:
        """Items via structured output; None → fall back to the JSON path."""
        try:
            out = self._structured.invoke(messages)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 — any provider error: fall back, never crash the turn
            log.warning("structured extraction failed (%s: %s); asking for JSON instead", type(exc).__name__, exc)
            return None
        parsed = out.get("parsed") if isinstance(out, dict) else out
        if isinstance(parsed, ExtractionResult):
            return [item.model_dump() for item in parsed.items]
        raw = out.get("raw") if isinstance(out, dict) else None
        for call in getattr(raw, "tool_calls", None) or []:  # partly valid tool arguments: keep the valid items
            return parse_items(call.get("args"))
        return parse_items(_text_of(raw)) if raw is not None else None

    def _ask_json(self, messages: list[BaseMessage]) -> list[dict[str, Any]]:
        try:
            reply = self.chat_model.invoke(messages)
        except Exception as exc:  # noqa: BLE001 — the extractor runs in the background; a failed call is logged
            log.warning("LLM extraction call failed (%s: %s); no candidates", type(exc).__name__, exc)
            return []
        items = parse_items(_text_of(reply))
        if not items:
            log.info("LLM extraction reply held no JSON items: %.200r", _text_of(reply))
        return items
