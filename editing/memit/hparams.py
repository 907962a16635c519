"""Hyper-parameters of MEMIT: ROME's value optimisation, spread over several layers."""

from __future__ import annotations

from dataclasses import dataclass

from editing.errors import InvalidRequest
from editing.rome.hparams import ValueHyperParams

__all__ = ["MEMITHyperParams"]


@dataclass(frozen=True)
class MEMITHyperParams(ValueHyperParams):
    """MEMIT: z* at the last of ``layers``, the residual spread over all of them by least squares."""

    # Method
    layers: tuple[int, ...] = (3, 4, 5)  # consecutive, ascending; z* is read after the last one
    # Statistics
    # λ in (λ C + K_pᵀ K_p + K Kᵀ)⁻¹: a layer writes ≈ d / (λ + d) of its share at the key. SmolLM2, 5 CounterFact
    # cases, layers 3-5, no statistics: λ = 1500 → efficacy 0.8; λ = 300 → 1.0, locality 0.8 in both.
    mom2_update_weight: float = 300.0

    def __post_init__(self) -> None:
        super().__post_init__()
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise InvalidRequest(f"layers must be distinct ascending non-negative layer indices, got {self.layers}")
        if self.mom2_update_weight <= 0:
            raise InvalidRequest(f"mom2_update_weight must be > 0, got {self.mom2_update_weight}")
