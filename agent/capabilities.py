"""What personalization is really active: a small structured report instead of a claim.

* **input level** — the user's profile and retrieved memories in the prompt: active whenever the agent
  runs (any chat model).
* **model level** — the model itself changes per user (knowledge edits, preference weights, adapters):
  active only when the chat model is pllm's local model *and* the update worker has a handler for at
  least one job kind. Without a handler a job is recorded as skipped, so claiming it would be false.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from agent.policy import JobKind

__all__ = ["Capabilities", "JOB_KINDS", "capabilities_of"]

JOB_KINDS: tuple[str, ...] = get_args(JobKind)


@dataclass(frozen=True)
class Capabilities:
    """Which personalization levels are active, and why the model level is or is not."""

    input_level: bool
    local_model: bool  # the chat model is pllm's local transformers model
    chat_model: str  # its class name, for the explanation
    handlers: Mapping[str, bool]  # every job kind → whether a handler is registered
    off_reason: str | None = None  # why no handler was registered, when that was a setting (e.g. turned off)

    @property
    def model_level(self) -> bool:
        return self.local_model and any(self.handlers.values())

    @property
    def handled(self) -> list[str]:
        return [k for k, on in self.handlers.items() if on]

    @property
    def unhandled(self) -> list[str]:
        return [k for k, on in self.handlers.items() if not on]

    def model_level_detail(self) -> str:
        """One clause: why the model level is (not) active."""
        if not self.local_model:
            return f"the chat model ({self.chat_model}) is not pllm's local model, so no model update can apply"
        if not self.handled and self.off_reason:
            return self.off_reason
        if not self.handled:
            return f"no handler registered for {', '.join(self.unhandled)} (those updates are skipped)"
        skipped = f"; no handler for {', '.join(self.unhandled)} (skipped)" if self.unhandled else ""
        return f"{', '.join(self.handled)}{skipped}"

    def describe(self) -> str:
        """The line an interface shows, e.g. at the start of a chat."""
        if self.model_level:
            return ("personalization: input level (profile + retrieval in the prompt) and model level "
                    f"({self.model_level_detail()})")
        return ("personalization: input level only (profile + retrieval in the prompt); model level not active: "
                f"{self.model_level_detail()}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``pllm info --json``, a server's health endpoint)."""
        return {"input_level": {"active": self.input_level},
                "model_level": {"active": self.model_level, "local_model": self.local_model,
                                "chat_model": self.chat_model, "detail": self.model_level_detail(),
                                "handlers": dict(self.handlers)}}


def capabilities_of(*, local_model: bool, chat_model: str, handler_kinds: Iterable[str],
                    off_reason: str | None = None) -> Capabilities:
    """The report for a chat model and the job kinds that have handlers (``off_reason``: why there are none)."""
    registered = set(handler_kinds)
    return Capabilities(input_level=True, local_model=local_model, chat_model=chat_model,
                        handlers={kind: kind in registered for kind in JOB_KINDS}, off_reason=off_reason)
