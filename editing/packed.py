"""bf16 linear layers on CPU with their weights pre-packed for oneDNN, for the fast decode step.

On a CPU, ``F.linear`` of a bf16 weight reorders (packs) the weight into oneDNN's blocked layout on *every* call;
for the small matrices of one decode step (one to a few rows of input) that repacking costs more than the product.
Packing each weight once (``torch.ops.mkldnn._reorder_linear_weight``) and running ``_linear_pointwise`` on the
packed copy removes it. On the 2-core Xeon of ``bench/generate.py``'s notes, 210 random matrices of the shapes of
SmolLM2's projections (one decode step's) took 14-16 ms packed against 23 ms unpacked in bf16 and 18 ms (1 row) /
30 ms (4 rows) in fp32, and the packed cost hardly grew with the rows of a batch (a ``python -`` timing, not kept).
The results are the numbers ``F.linear`` gives (``tests/editing/test_packed.py`` checks the step's logits against
the model's forward bit for bit). The cost: a second copy of the projections and the LM head (about 270 MB for
SmolLM2 in bf16).

Only for bf16 weights on a CPU whose oneDNN runs bf16; anything else (fp32, an accelerator, a torch without the
ops) gets ``None`` and the caller keeps ``F.linear``. Packed copies are kept per model and rebuilt when a weight
changes (its storage or its version counter: an in-place edit bumps it), so an edited weight is never served
stale. ``PLLM_PACKED_LINEAR=0`` turns packing off.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PackedLinears", "packed_linears", "packing_reason"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_by_model: "weakref.WeakKeyDictionary[Any, PackedLinears]" = weakref.WeakKeyDictionary()


def packing_reason(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why weights of ``dtype`` on ``device`` are not packed (``None`` = they are)."""
    if os.environ.get("PLLM_PACKED_LINEAR", "1").strip().lower() in ("0", "false", "no", "off"):
        return "PLLM_PACKED_LINEAR=0"
    kind = torch.device(device).type
    if kind != "cpu":
        return f"weights on {kind}, not the CPU"
    if dtype != torch.bfloat16:
        return f"weights are {str(dtype).removeprefix('torch.')}, not bfloat16"
    if not torch.backends.mkldnn.is_available():
        return "torch was built without oneDNN"
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "this CPU's oneDNN has no bf16 kernels"
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018 - the op exists in this torch
        torch.ops.mkldnn._linear_pointwise  # noqa: B018
    except (AttributeError, RuntimeError) as exc:
        return f"this torch lacks the oneDNN linear ops ({exc})"
    return None


def _signature(modules: Sequence[Any]) -> tuple[tuple[int, int], ...]:
    return tuple((m.weight.data_ptr(), m.weight._version) for m in modules)


class PackedLinears:
    """Packed copies of ``modules``' weights (``nn.Linear``, bf16, on the CPU); see the module docstring.

    ``groups``: tuples of modules (among ``modules``, without biases) that read the same input, such as a layer's
    query, key and value projections: each group is packed as one matrix (their weights stacked), so one product
    gives all of their outputs. That is one oneDNN call instead of three, and the numbers are those of the
    separate products (checked bit for bit in ``tests/editing/test_packed.py``). A grouped module has no packed
    copy of its own (no extra memory).
    """

    def __init__(self, modules: Sequence[Any], groups: Sequence[Sequence[Any]] = ()) -> None:
        self.modules = list(modules)
        self.signature = _signature(self.modules)
        known = {id(m) for m in self.modules}
        self.requested = [tuple(id(m) for m in g) for g in groups]  # as asked (a group with a bias is not packed)
        self.groups = [tuple(g) for g in groups
                       if len(g) > 1 and all(id(m) in known and m.bias is None for m in g)]
        grouped = {id(m) for g in self.groups for m in g}
        with torch.no_grad():
            self._packed = {id(m): torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None)
                            for m in self.modules if id(m) not in grouped}
            self._grouped = {tuple(id(m) for m in g): (torch.ops.mkldnn._reorder_linear_weight(
                torch.cat([m.weight.detach() for m in g]), None), [m.weight.shape[0] for m in g])
                for g in self.groups}

    def current(self) -> bool:
        """Whether every weight is still the tensor, at the version, that was packed."""
        return _signature(self.modules) == self.signature

    def linear(self, x: torch.Tensor, module: Any) -> torch.Tensor:
        """``module(x)`` from the packed weight (``F.linear`` for a module not packed here)."""
        packed = self._packed.get(id(module))
        if packed is None or x.dtype != torch.bfloat16:
            return F.linear(x, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")

    def linears(self, x: torch.Tensor, modules: Sequence[Any]) -> list[torch.Tensor]:
        """``[m(x) for m in modules]``: one product when ``modules`` is a packed group, else one each."""
        found = self._grouped.get(tuple(id(m) for m in modules))
        if found is None or x.dtype != torch.bfloat16:
            return [self.linear(x, m) for m in modules]
        packed, sizes = found
        return list(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "").split(sizes, dim=-1))


def packed_linears(model: Any, modules: Sequence[Any], groups: Sequence[Sequence[Any]] = ()) -> PackedLinears | None:
    """The packed copies of ``modules`` (all of ``model``; ``groups`` as in :class:`PackedLinears`), built once
    per model and weight version; ``None`` when packing does not apply (see :func:`packing_reason`) or a module
    is not a bf16 ``nn.Linear`` on the CPU."""
    if not modules:
        return None
    reason = packing_reason(modules[0].weight.device, modules[0].weight.dtype)
    if reason is None and not all(isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.bfloat16
                                  and m.weight.device.type == "cpu" for m in modules):
        reason = "not every projection is a bf16 nn.Linear on the CPU"
    if reason is not None:
        log.debug("linear layers not packed: %s", reason)
        return None
    with _lock:
        found = _by_model.get(model)
        if found is not None and found.current() and [id(m) for m in found.modules] == [id(m) for m in modules] \
                and found.requested == [tuple(id(m) for m in g) for g in groups]:
            return found
        try:
            built = PackedLinears(modules, groups)
        except RuntimeError as exc:  # an op refused this CPU or shape: decode as before
            log.info("linear layers not packed: %s", exc)
            return None
        log.info("packed %d bf16 linear layers for the fast decode step%s", len(modules),
                 " (a weight changed: repacked)" if found is not None else "")
        _by_model[model] = built
        return built
