"""The style dimensions' poles, the instruction that asks for each, and how a user's weights pick poles.

The dimensions and their poles (:data:`DIMENSIONS`: verbosity concise ↔ detailed, formality casual ↔ formal,
expertise layperson ↔ expert; weight -1 is the first pole, +1 the second) are the ones memory keeps weights on
(``memory.relations.DIMENSIONS``; ``editing`` does not import ``memory``, a test keeps the two equal). Each pole has
an instruction: written into a system prompt, it is how pllm asks the base model for that style when it builds
preference pairs (:mod:`editing.alignment.pairs`) and what the input-level baseline of ``bench/align_control.py``
writes into the prompt. The trained pole adapter must give the style *without* it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from editing.errors import InvalidRequest

__all__ = ["DIMENSIONS", "INSTRUCTIONS", "MILD_INSTRUCTIONS", "Pole", "all_poles", "pole_of", "pole_mix", "instruction_for"]

DIMENSIONS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "verbosity": ("concise", "detailed"),
    "formality": ("casual", "formal"),
    "expertise": ("layperson", "expert"),
})

INSTRUCTIONS: Mapping[str, str] = {
    "concise": "Answer in one or two short sentences. Be brief: no lists, no details.",
    "detailed": "Answer in detail: explain thoroughly, step by step, with several points and an example.",
    "casual": "Answer casually, like chatting with a friend: relaxed, simple everyday words, contractions, "
              "and talk to me as 'you'.",
    "formal": "Answer in a formal, academic register: precise nouns and adjectives, complete impersonal sentences, "
              "no contractions, no slang, no exclamations.",
    "layperson": "Explain it simply for a child or a complete beginner: short sentences, easy words, no jargon.",
    "expert": "Answer as a specialist writing for experts: technical terminology, precise mechanisms, "
              "long sentences, no simplification.",
}

# The same requests, softened: the input-level baseline's |weight| = 0.5 settings.
MILD_INSTRUCTIONS: Mapping[str, str] = {
    "concise": "Keep the answer fairly short.",
    "detailed": "Give a somewhat fuller answer than usual.",
    "casual": "Keep the tone a bit relaxed.",
    "formal": "Keep the tone somewhat formal.",
    "layperson": "Keep the explanation fairly simple.",
    "expert": "Be somewhat technical.",
}


@dataclass(frozen=True)
class Pole:
    """One pole of a dimension: ``sign`` -1 for the first pole (weight -1), +1 for the second."""

    dimension: str
    name: str
    sign: int

    @property
    def key(self) -> str:
        """The pole's adapter name, e.g. ``verbosity.concise``."""
        return f"{self.dimension}.{self.name}"

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.name]


def pole_of(dimension: str, sign: float) -> Pole:
    """The pole of ``dimension`` a weight of ``sign`` leans to (negative: the first pole; positive: the second)."""
    if dimension not in DIMENSIONS:
        raise InvalidRequest(f"unknown style dimension {dimension!r}; known: {sorted(DIMENSIONS)}")
    if sign == 0:
        raise InvalidRequest(f"a weight of 0 on {dimension} leans to no pole")
    first, second = DIMENSIONS[dimension]
    return Pole(dimension, second, 1) if sign > 0 else Pole(dimension, first, -1)


def all_poles(dimensions: tuple[str, ...] | None = None) -> list[Pole]:
    """Both poles of each dimension (all of memory's dimensions by default), first pole first."""
    out = []
    for dim in dimensions or tuple(DIMENSIONS):
        out += [pole_of(dim, -1), pole_of(dim, 1)]
    return out


def pole_mix(weights: Mapping[str, float]) -> dict[str, float]:
    """Pole key → mixing weight for a user's ``weights`` (dimension → w in [-1, 1]).

    A weight ``w`` on a dimension puts ``|w|`` on the pole it leans to and nothing on the other; 0 adds nothing
    (the base model's own style). Weights outside [-1, 1] or on unknown dimensions are refused.
    """
    out: dict[str, float] = {}
    for dim, w in weights.items():
        if dim not in DIMENSIONS:
            raise InvalidRequest(f"unknown style dimension {dim!r}; known: {sorted(DIMENSIONS)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not -1.0 <= float(w) <= 1.0:
            raise InvalidRequest(f"the weight on {dim} must be a number in [-1, 1], got {w!r}")
        if w != 0:
            out[pole_of(dim, w).key] = abs(float(w))
    return out


def instruction_for(dimension: str, weight: float) -> str | None:
    """The input-level equivalent of ``weight`` on ``dimension``: the pole's instruction at |w| >= 0.75, the mild
    one from 0.25, none below."""
    if abs(weight) < 0.25:
        return None
    pole = pole_of(dimension, weight)
    return INSTRUCTIONS[pole.name] if abs(weight) >= 0.75 else MILD_INSTRUCTIONS[pole.name]
