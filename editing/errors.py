"""Errors of the model-editing layer.

::

    EditingError
    ├── ModelNotFound        a model path / id / packaged GGUF that is not on disk (says what was looked for)
    ├── ModelCacheError      the converted-model cache could not be built
    └── InvalidRequest       a malformed edit / adapter / generation request
        └── StaleAdapter     an adapter made for another base model than the one loaded
"""

from __future__ import annotations

__all__ = ["EditingError", "ModelNotFound", "ModelCacheError", "InvalidRequest", "StaleAdapter"]


class EditingError(Exception):
    """Base class of every error raised by ``editing``."""


class ModelNotFound(EditingError, FileNotFoundError):
    """The requested model is not on this machine."""


class ModelCacheError(EditingError, RuntimeError):
    """Converting or validating the cached model folder failed."""


class InvalidRequest(EditingError, ValueError):
    """A request that cannot be served as given."""


class StaleAdapter(InvalidRequest):
    """An adapter (or user view) recorded for a different base model: it must be re-made on the current base."""
