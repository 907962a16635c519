"""Typed records of knowledge editing: what to write into a model, and the low-rank change that writes it.

A user's knowledge edits live in that user's adapter, never in the base weights: every method returns
:class:`LowRankDelta`\\ s (``ΔW = B @ A`` on one module), which :mod:`editing.adapters` stores as a PEFT LoRA
adapter with scaling 1 — so an edit is applied per request, listed, undone and exported like any adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from editing.errors import InvalidRequest

__all__ = ["EditRequest", "LowRankDelta", "EditResult"]


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string, got {value!r}")
    return value


def _texts(name: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidRequest(f"{name} must be a sequence of strings, not one string: wrap it as ({values!r},)")
    return tuple(_text(f"{name}[{i}]", v) for i, v in enumerate(values))  # type: ignore[arg-type]


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into a model.

    ``prompt.format(subject)`` is a plain-text prompt that should continue with ``target_new`` (ROME's
    request shape: ``"{} lives in the city of"`` with subject ``"Sam"``). ``chat_questions`` are user turns
    this fact answers in chat form ("Where do I live?"), ``answer_prefix`` the assistant's words before
    the target ("You live in"). ``key`` names the slot the edit occupies: a user has at most one active
    edit per key, so a fact that changes again replaces its edit.
    """

    prompt: str
    subject: str
    target_new: str
    target_old: str | None = None
    chat_questions: tuple[str, ...] = ()
    answer_prefix: str = ""
    paraphrases: tuple[str, ...] = ()
    key: str = ""

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        _text("subject", self.subject)
        _text("target_new", self.target_new)
        if self.prompt.count("{}") != 1:
            raise InvalidRequest(f"prompt must hold exactly one '{{}}' where the subject goes, got {self.prompt!r}")
        if self.target_old is not None:
            _text("target_old", self.target_old)
        object.__setattr__(self, "chat_questions", _texts("chat_questions", self.chat_questions))
        object.__setattr__(self, "paraphrases", _texts("paraphrases", self.paraphrases))
        if not isinstance(self.answer_prefix, str) or not isinstance(self.key, str):
            raise InvalidRequest("answer_prefix and key must be strings")

    @property
    def text(self) -> str:
        """The plain-text prompt with the subject filled in."""
        return self.prompt.format(self.subject)


@dataclass(frozen=True)
class LowRankDelta:
    """``ΔW = B @ A`` on one module of the base model (PEFT's ``lora_B.weight @ lora_A.weight``, scaling 1).

    ``A``: ``(r, in_features)``; ``B``: ``(out_features, r)``. For a module whose weight is stored
    transposed (GPT-2's ``Conv1D``: ``(in, out)``), the delta is still given in ``(out, in)`` orientation.
    """

    module: str  # full module name in the base model, e.g. "model.layers.4.mlp.down_proj"
    A: torch.Tensor
    B: torch.Tensor

    def __post_init__(self) -> None:
        _text("module", self.module)
        if self.A.dim() != 2 or self.B.dim() != 2 or self.A.shape[0] != self.B.shape[1]:
            raise InvalidRequest(f"LowRankDelta on {self.module}: need A (r, in) and B (out, r) of the same rank, "
                                 f"got A {tuple(self.A.shape)} and B {tuple(self.B.shape)}")

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def dense(self) -> torch.Tensor:
        """The full ``(out, in)`` matrix (for checks; never applied to a model's weights)."""
        return self.B @ self.A


@dataclass(frozen=True)
class EditResult:
    """What a method computed for one request: the deltas that write it, the keys it wrote, its metrics.

    ``keys`` maps a module name to the ``(n, in_features)`` keys the edit wrote there, so later edits can
    preserve this one (MEMIT / AlphaEdit-style constraints).
    """

    request: EditRequest
    method: str
    deltas: tuple[LowRankDelta, ...]
    keys: Mapping[str, torch.Tensor] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text("method", self.method)
        object.__setattr__(self, "deltas", tuple(self.deltas))
        object.__setattr__(self, "keys", dict(self.keys))  # copies: the caller's mappings stay theirs
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})
        if not self.deltas:
            raise InvalidRequest(f"an EditResult of {self.method} for {self.request.text!r} has no deltas")
