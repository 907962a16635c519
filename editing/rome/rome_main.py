"""ROME: a rank-one update ``ΔW = b uᵀ`` of one MLP matrix per request, returned as a delta.

For each request, in order (each later request sees the earlier ones' deltas, applied by hooks):

1. k* — the key at the subject's last token (:mod:`editing.rome.compute_u`), u = C⁻¹ k*;
2. δ = v* − W k* — the change of the MLP output that makes the new target likely
   (:mod:`editing.rome.compute_v`);
3. ``ΔW = δ uᵀ / (uᵀ k*)``, so ``ΔW k* = δ`` exactly: ``A = uᵀ`` ``(1, in)``, ``B = δ / (uᵀ k*)`` ``(out, 1)``.

Invariant: the model at the end == the model at the beginning (weights, train/eval flag, no ``.grad``);
the edit exists only as the returned :class:`~editing.requests.LowRankDelta`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from editing.errors import InvalidRequest
from editing.hooks import apply_deltas, find_module, inference_mode_of
from editing.requests import EditRequest, EditResult, LowRankDelta
from editing.rome.compute_u import compute_key, compute_u
from editing.rome.compute_v import compute_v
from editing.rome.hparams import ROMEHyperParams
from editing.rome.prompts import prefixes_for
from editing.stats import SecondMoments, key_covariance, preserved_outer

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["compute_rome", "checked_requests"]


def checked_requests(requests: Sequence[EditRequest]) -> list[EditRequest]:
    """``requests`` as a list, or InvalidRequest saying what is wrong with it."""
    if isinstance(requests, EditRequest):
        raise InvalidRequest("requests must be a sequence of EditRequest: wrap the single request as [request]")
    requests = list(requests)
    if not requests:
        raise InvalidRequest("requests is empty: pass at least one EditRequest")
    for i, r in enumerate(requests):
        if not isinstance(r, EditRequest):
            raise InvalidRequest(f"requests[{i}] is a {type(r).__name__}, not an EditRequest: {r!r}")
    return requests


def compute_rome(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", requests: Sequence[EditRequest],
                 hparams: ROMEHyperParams, *, stats: SecondMoments | None = None,
                 preserve: Mapping[str, torch.Tensor] | None = None) -> list[EditResult]:
    """One :class:`EditResult` (one rank-one delta) per request; the model is left exactly as it was.

    ``stats`` whitens u by the key second moment C (None: C isotropic); ``preserve`` maps a module name to the
    ``(m, in)`` keys of earlier edits there, added to C (weight ``hparams.preserve_weight``) so this
    update reads them as little as it can.
    """
    requests = checked_requests(requests)
    module = hparams.rewrite_module_tmp.format(hparams.layer)
    mlp = hparams.mlp_module_tmp.format(hparams.layer)
    find_module(model, module), find_module(model, mlp)  # clear errors before any work
    results: list[EditResult] = []
    with inference_mode_of(model):
        prefixes = prefixes_for(model, tokenizer, hparams)
        for request in requests:
            t0 = time.perf_counter()
            with apply_deltas(model, [d for r in results for d in r.deltas]):
                key = compute_key(model, tokenizer, request, prefixes, module)  # k* (in,)
                covariance = None  # C = I: u = k*
                if stats is not None or preserve:
                    covariance = (key_covariance(stats, module, key, n_tokens=hparams.mom2_n_tokens,
                                                 ridge=hparams.mom2_ridge)
                                  + hparams.preserve_weight * preserved_outer(preserve, module, key.shape[0]))
                u = compute_u(key, covariance)  # (in,)
                value = compute_v(model, tokenizer, request, hparams, module=mlp, prefixes=prefixes)
            b = value.delta / torch.dot(u, key)  # (out,)
            delta = LowRankDelta(module, A=u[None, :].cpu(), B=b[:, None].cpu())
            results.append(EditResult(request, "rome", (delta,), keys={module: key[None, :].cpu()}, metrics={
                "nll_before": value.nll_before, "nll_after": value.nll_after, "steps": value.steps,
                "delta_norm": float(value.delta.norm()), "seconds": time.perf_counter() - t0}))
    return results
