"""k* and u: the key the edit writes, and the direction the rank-one update reads it through.

k* is the input of the rewritten matrix W at the subject's last token, averaged over the context
prefixes. u = C⁻¹ k* (whitened by the key second moment C when statistics are used, u = k* when not),
so that the update ``ΔW = b uᵀ`` disturbs the typical keys of W as little as possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from editing.hooks import capture
from editing.requests import EditRequest
from editing.rome.prompts import pad_batch, request_encodings

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["subject_representations", "compute_key", "compute_u"]


@torch.no_grad()
def subject_representations(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
                            prefixes: Sequence[str], module: str, *, what: str = "input") -> torch.Tensor:
    """``(len(prefixes), d)``: module ``module``'s input (or output) at the subject's last token, per prefix."""
    encoded = request_encodings(tokenizer, request, prefixes)
    ids, mask = pad_batch([e.ids for e in encoded], next(model.parameters()).device)
    with capture(model, module, what=what) as seen:
        model(input_ids=ids, attention_mask=mask)
    rows = torch.arange(len(encoded))
    cols = torch.tensor([e.subject_last for e in encoded])
    return seen[0][rows, cols].float()  # (P, d)


def compute_key(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
                prefixes: Sequence[str], module: str) -> torch.Tensor:
    """k* ``(in,)``: the key of ``request``'s subject at ``module``, averaged over the prefixes."""
    return subject_representations(model, tokenizer, request, prefixes, module).mean(dim=0)


def compute_u(key: torch.Tensor, covariance: torch.Tensor | None) -> torch.Tensor:
    """u = C⁻¹ k* ``(in,)`` (k* itself when there is no covariance)."""
    if covariance is None:
        return key
    return torch.linalg.solve(covariance.to(key.device, key.dtype), key)
