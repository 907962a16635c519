"""``pllm serve``: the OpenAI-compatible chat API, the memory REST API and the web chat over one pllm stack.

``create_app(stack, keys=KeyStore.under(home), require_keys=True)`` builds the FastAPI app (see
:mod:`agent.serve.app`); :mod:`agent.serve.keys` holds the API keys. Importing this package loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agent.serve.app import create_app
    from agent.serve.keys import ApiKey, KeyStore

__all__ = ["create_app", "KeyStore", "ApiKey"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from agent.serve.app import create_app

        return create_app
    if name in ("KeyStore", "ApiKey"):
        from agent.serve import keys

        return getattr(keys, name)
    raise AttributeError(f"module 'agent.serve' has no attribute {name!r}")
