"""Model runtime and model-level personalization: load the base model, knowledge edits, adapters.

Knowledge editing (ROME, MEMIT) is a library API here: methods return deltas and never change the model.

Importing this package does no I/O; models load when :meth:`LocalModel.load` is called.
"""

from editing.adapters import AdapterStore, UserView, VersionInfo, load_lora, save_lora
from editing.device import DevicePlan, choose_device
from editing.errors import EditingError, InvalidRequest, ModelCacheError, ModelNotFound, StaleAdapter
from editing.generation import GenerationSettings
from editing.hooks import apply_deltas
from editing.memit import MEMITHyperParams, compute_memit
from editing.methods import METHODS, Method, get_method
from editing.model_cache import cache_state, cached_folder_for, ensure_converted, locate_packaged_gguf
from editing.requests import EditRequest, EditResult, LowRankDelta
from editing.rome import ROMEHyperParams, compute_rome, with_fixed_prefixes
from editing.runtime import ChatTurn, LocalModel, RuntimeConfig
from editing.stats import SecondMoments

__all__ = [
    "AdapterStore",
    "ChatTurn",
    "DevicePlan",
    "EditRequest",
    "EditResult",
    "EditingError",
    "GenerationSettings",
    "InvalidRequest",
    "LocalModel",
    "LowRankDelta",
    "MEMITHyperParams",
    "METHODS",
    "Method",
    "ModelCacheError",
    "ModelNotFound",
    "ROMEHyperParams",
    "RuntimeConfig",
    "SecondMoments",
    "StaleAdapter",
    "UserView",
    "VersionInfo",
    "apply_deltas",
    "cache_state",
    "cached_folder_for",
    "choose_device",
    "compute_memit",
    "compute_rome",
    "ensure_converted",
    "get_method",
    "load_lora",
    "locate_packaged_gguf",
    "save_lora",
    "with_fixed_prefixes",
]
