"""Model runtime and model-level personalization: load the base model, knowledge edits, adapters.

Knowledge editing (ROME, MEMIT) is a library API here: methods return deltas and never change the model.

Importing this package does no I/O; models load when :meth:`LocalModel.load` is called.
"""

from editing.device import DevicePlan, choose_device
from editing.errors import EditingError, InvalidRequest, ModelCacheError, ModelNotFound
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
    "apply_deltas",
    "cache_state",
    "cached_folder_for",
    "choose_device",
    "compute_memit",
    "compute_rome",
    "ensure_converted",
    "get_method",
    "locate_packaged_gguf",
    "with_fixed_prefixes",
]
