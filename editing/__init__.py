"""Model runtime and model-level personalization: load the base model, knowledge edits, adapters.

Importing this package does no I/O; models load when :meth:`LocalModel.load` is called.
"""

from editing.device import DevicePlan, choose_device
from editing.errors import EditingError, InvalidRequest, ModelCacheError, ModelNotFound
from editing.generation import GenerationSettings
from editing.model_cache import cache_state, cached_folder_for, ensure_converted, locate_packaged_gguf
from editing.runtime import ChatTurn, LocalModel, RuntimeConfig

__all__ = [
    "ChatTurn",
    "DevicePlan",
    "EditingError",
    "GenerationSettings",
    "InvalidRequest",
    "LocalModel",
    "ModelCacheError",
    "ModelNotFound",
    "RuntimeConfig",
    "cache_state",
    "cached_folder_for",
    "choose_device",
    "ensure_converted",
    "locate_packaged_gguf",
]
