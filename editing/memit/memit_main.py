"""MEMIT: write many facts at once, spreading each one's change over several MLP layers.

1. z* — per request, the residual stream after the last layer L of ``layers`` at the subject's last
   token that makes the new target likely: z* = z_init + δ, δ from ROME's :func:`compute_v` hooked on
   ``layer_module_tmp.format(L)``.
2. For each layer l in ``layers``, in order, with the updates of the earlier layers applied (by hooks):
   K ``(n, in)`` the requests' keys at l (ROME's :func:`compute_key`), R = (z* − z_now) / (layers left)
   ``(n, out)``, and the least-squares update that maps K to R while keeping C's typical keys (and the
   keys of earlier edits, ``preserve``) where they were:

       ΔW_l = Rᵀ · [(λ C + K_pᵀ K_p + Kᵀ K)⁻¹ Kᵀ]ᵀ        (out, in)

   Column i of Rᵀ times row i of the bracket is request i's share: each request gets its own rank-one
   delta per layer, and the sum over requests is the joint update.

Invariant: the model at the end == the model at the beginning; the edits exist only as deltas.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from editing.hooks import apply_deltas, find_module, inference_mode_of
from editing.memit.hparams import MEMITHyperParams
from editing.requests import EditRequest, EditResult, LowRankDelta
from editing.rome.compute_u import compute_key, subject_representations
from editing.rome.compute_v import TargetValue, compute_v
from editing.rome.prompts import prefixes_for
from editing.rome.rome_main import checked_requests
from editing.stats import SecondMoments, key_covariance, preserved_outer

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["compute_memit"]


def compute_memit(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", requests: Sequence[EditRequest],
                  hparams: MEMITHyperParams, *, stats: SecondMoments | None = None,
                  preserve: Mapping[str, torch.Tensor] | None = None) -> list[EditResult]:
    """One :class:`EditResult` per request (one rank-one delta per layer); the model is left as it was.

    ``stats`` gives C per layer (None: C = I); ``preserve`` maps a module name to the ``(m, in)`` keys of
    earlier edits there, which the update keeps mapping where they did.
    """
    requests = checked_requests(requests)
    z_module = hparams.layer_module_tmp.format(hparams.layers[-1])
    modules = [hparams.rewrite_module_tmp.format(layer) for layer in hparams.layers]
    for name in [z_module, *modules]:
        find_module(model, name)
    t0 = time.perf_counter()
    with inference_mode_of(model):
        prefixes = prefixes_for(model, tokenizer, hparams)
        values = [compute_v(model, tokenizer, r, hparams, module=z_module, prefixes=prefixes) for r in requests]
        z_star = torch.stack([v.v_star for v in values])  # (n, d)
        shares: list[list[LowRankDelta]] = [[] for _ in requests]
        keys: list[dict[str, torch.Tensor]] = [{} for _ in requests]
        for i, module in enumerate(modules):
            with apply_deltas(model, [d for per_request in shares for d in per_request]):
                k = torch.stack([compute_key(model, tokenizer, r, prefixes, module) for r in requests])  # (n, in)
                z_now = torch.cat([subject_representations(model, tokenizer, r, [""], z_module, what="output")
                                   for r in requests])  # (n, d)
            residual = (z_star - z_now) / (len(modules) - i)  # (n, out): this layer's share of what is left
            adjusted = _adjusted_keys(k, module, hparams, stats, preserve)  # (n, in)
            for j in range(len(requests)):
                shares[j].append(LowRankDelta(module, A=adjusted[j:j + 1].cpu(), B=residual[j][:, None].cpu()))
                keys[j][module] = k[j:j + 1].cpu()
    seconds = time.perf_counter() - t0
    return [EditResult(r, "memit", tuple(shares[j]), keys=keys[j], metrics=_metrics(values[j], seconds))
            for j, r in enumerate(requests)]


def _adjusted_keys(k: torch.Tensor, module: str, hparams: MEMITHyperParams, stats: SecondMoments | None,
                   preserve: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """``[(λ C + K_pᵀ K_p + Kᵀ K)⁻¹ Kᵀ]ᵀ`` ``(n, in)``: the rows that read each request's key."""
    dim = k.shape[1]
    k = k.cpu()
    c = key_covariance(stats, module, k, n_tokens=hparams.mom2_n_tokens, ridge=hparams.mom2_ridge)
    constraint = (hparams.mom2_update_weight * c
                  + hparams.preserve_weight * preserved_outer(preserve, module, dim) + k.T @ k)  # (in, in)
    return torch.linalg.solve(constraint.double(), k.T.double()).T.float()


def _metrics(value: TargetValue, seconds: float) -> dict[str, float]:
    return {"nll_before": value.nll_before, "nll_after": value.nll_after, "steps": value.steps,
            "delta_norm": float(value.delta.norm()), "seconds": seconds}
