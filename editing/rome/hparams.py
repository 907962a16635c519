"""Hyper-parameters of ROME (and the part MEMIT shares with it), validated on construction.

Module names are templates filled with a layer index, so a model family is a choice of templates, not
a branch in the code: llama / qwen / SmolLM2 use the defaults; GPT-2 uses
``rewrite_module_tmp="transformer.h.{}.mlp.c_proj"``, ``mlp_module_tmp="transformer.h.{}.mlp"``,
``layer_module_tmp="transformer.h.{}"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from editing.errors import InvalidRequest

__all__ = ["ValueHyperParams", "ROMEHyperParams"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


@dataclass(frozen=True)
class ValueHyperParams:
    """What ROME and MEMIT share: how v* is optimized, where the keys are read, the statistics used."""

    # Method
    v_num_grad_steps: int = 20  # Adam steps on the delta vector (stops early once the target is likely)
    v_lr: float = 0.5
    v_stop_nll: float = 5e-2  # stop once the mean target NLL per token is below this (≈ 95 % likely)
    v_weight_decay: float = 1e-3  # on (‖δ‖ / ‖v_init‖)²
    clamp_norm_factor: float = 4.0  # ‖δ‖ ≤ factor · ‖v_init‖
    kl_factor: float = 0.0625  # weight of KL(before ‖ after) on the "essence" prompt
    kl_prompt: str = "{} is a"  # the essence prompt: what the subject is must not change
    context_template_lengths: tuple[tuple[int, int], ...] = ((5, 4),)  # (tokens, count) of generated prefixes
    context_seed: int = 0
    # The prefixes themselves, when fixed ("" first): a caller that makes many edits generates them once
    # (:func:`editing.rome.prompts.with_fixed_prefixes`) instead of once per call. Empty: generate per call.
    context_prefixes: tuple[str, ...] = ()
    # Module templates
    rewrite_module_tmp: str = "model.layers.{}.mlp.down_proj"  # the matrix W that is edited; keys = its input
    layer_module_tmp: str = "model.layers.{}"  # a whole block; its output is the residual stream
    mlp_module_tmp: str = "model.layers.{}.mlp"  # the MLP; its output is W's output
    # Statistics
    mom2_n_tokens: int = 20_000  # tokens behind C = E[k kᵀ] (when statistics are given)
    mom2_ridge: float = 1e-2  # C + ridge · mean(diag C) · I, so a small sample still inverts
    preserve_weight: float = 1.0  # weight of earlier edits' keys K_p added to the constraint: C + w · K_pᵀ K_p

    def __post_init__(self) -> None:
        _check(self.v_num_grad_steps >= 1, f"v_num_grad_steps must be >= 1, got {self.v_num_grad_steps}")
        _check(self.v_stop_nll >= 0, f"v_stop_nll must be >= 0, got {self.v_stop_nll}")
        _check(self.v_lr > 0, f"v_lr must be > 0, got {self.v_lr}")
        _check(self.clamp_norm_factor > 0, f"clamp_norm_factor must be > 0, got {self.clamp_norm_factor}")
        _check(min(self.kl_factor, self.v_weight_decay, self.mom2_ridge, self.preserve_weight) >= 0,
               "kl_factor, v_weight_decay, mom2_ridge and preserve_weight must be >= 0")
        _check(self.kl_prompt.count("{}") == 1, f"kl_prompt needs exactly one '{{}}', got {self.kl_prompt!r}")
        for name in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp"):
            value = getattr(self, name)
            _check(value.count("{}") == 1, f"{name} needs exactly one '{{}}' for the layer, got {value!r}")
        _check(all(n >= 1 and c >= 0 for n, c in self.context_template_lengths),
               f"context_template_lengths are (tokens >= 1, count >= 0) pairs, got {self.context_template_lengths}")
        object.__setattr__(self, "context_prefixes", tuple(self.context_prefixes))
        _check(not self.context_prefixes or self.context_prefixes[0] == "",
               f"context_prefixes must start with the empty prefix \"\", got {self.context_prefixes[:1]}")
        _check(self.mom2_n_tokens >= 1, f"mom2_n_tokens must be >= 1, got {self.mom2_n_tokens}")


@dataclass(frozen=True)
class ROMEHyperParams(ValueHyperParams):
    """ROME: one rank-one update of ``rewrite_module_tmp.format(layer)`` per request."""

    # Method
    layer: int = 4  # SmolLM2-135M: layer 4 (NOTES.md: 8 and 15 leaked into neighbours); bench/edit_layers.py
    # Faster v* for ROME (MEMIT keeps the shared defaults). SmolLM2, the same 12 CounterFact cases, 1 thread on a
    # loaded 2-core machine: 4 prefixes, lr 0.5, stop at NLL 0.05 → 27.5 s per edit, efficacy / generalization /
    # locality 100 / 100 / 100 %; 2 prefixes, lr 1.0, stop at 0.2 → 8.1 s, 100 / 100 / 91.7 %.
    v_lr: float = 1.0
    v_stop_nll: float = 0.2
    context_template_lengths: tuple[tuple[int, int], ...] = ((5, 2),)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.layer >= 0, f"layer must be >= 0, got {self.layer}")
