"""The local transformers model as a LangChain chat model, so any LangGraph graph can use it.

``PllmChatModel(local=LocalModel.load(...), adapters=AdapterStore(...))`` streams token by token. Called with
``user_id=...`` (the agent's respond node does), it generates with that user's published adapter (their
knowledge edits) active for that request only, read from ``adapters`` on every call so a version published by
the update worker is used from the user's next turn; without ``adapters`` or a user, the base model. With
``fusion`` (a :class:`~editing.alignment.mod.PoleFusion`), a version whose preference layer is fused at decoding
time (``PLLM_STYLE_MERGE=mod``) is decoded from the user's policies and their weighted poles.
``model_kwargs`` pass through to the forward call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from editing import ChatTurn, GenerationSettings, LocalModel
from editing.adapters import AdapterStore, UserView
from editing.alignment.mod import PoleFusion

__all__ = ["PllmChatModel", "to_chat_turns"]

_ROLE = {"human": "user", "ai": "assistant", "system": "system", "tool": "user", "function": "user"}


def to_chat_turns(messages: Sequence[BaseMessage]) -> list[ChatTurn]:
    """LangChain messages → ``[{"role", "content"}]`` for the chat template (text parts only)."""
    turns: list[ChatTurn] = []
    for m in messages:
        role = _ROLE.get(m.type)
        if role is None:
            raise ValueError(f"unsupported message type {m.type!r}; use system, human or ai messages")
        content = m.content if isinstance(m.content, str) else "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in m.content
        )
        turns.append({"role": role, "content": content})
    return turns


class PllmChatModel(BaseChatModel):
    """A LangChain ``BaseChatModel`` over :class:`editing.LocalModel` (streaming supported)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    local: LocalModel
    settings: GenerationSettings = Field(default_factory=GenerationSettings)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    adapters: AdapterStore | None = None
    fusion: PoleFusion | None = None

    @property
    def _llm_type(self) -> str:
        return "pllm-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_id": self.local.model_id, "device": self.local.plan.describe()}

    def _settings(self, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationSettings:
        s = kwargs.pop("settings", None) or self.settings
        if stop:
            s = GenerationSettings(**{**s.__dict__, "stop": tuple(s.stop) + tuple(stop)})
        return s

    def view_for(self, user_id: str | None) -> UserView | None:
        """The user's published adapter on this base model (None: no store, no user, or nothing published), with
        its fused poles when its preference layer is served by MOD."""
        if self.adapters is None or not user_id:
            return None
        view = self.adapters.view(user_id, base_model_id=self.local.model_id)
        return self.fusion.apply(view) if self.fusion is not None else view

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        settings = self._settings(stop, kwargs)
        view = self.view_for(kwargs.pop("user_id", None))
        model_kwargs = {**self.model_kwargs, **kwargs.pop("model_kwargs", {})}
        for piece in self.local.stream(to_chat_turns(messages), settings, view=view, **model_kwargs):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text = "".join(c.text for c in self._stream(messages, stop, run_manager, **kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])
