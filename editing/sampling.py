"""Text a model writes itself, reproducibly: top-k sampling driven by a private ``torch.Generator``.

Used where the editing methods need neutral text and none is given — ROME's short context prefixes,
and the corpus for second-moment statistics. The global RNG is never seeded or consumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from editing.errors import InvalidRequest

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["sample_token_ids", "sample_texts"]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sample_token_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", starts: Sequence[str],
                     n_tokens: int, *, seed: int = 0, top_k: int = 50) -> torch.Tensor:
    """``(len(starts), 1 + n_tokens)`` ids: each start's first token, then ``n_tokens`` sampled ones."""
    if not starts or n_tokens < 1:
        raise InvalidRequest(f"need at least one start text and n_tokens >= 1, got {len(starts)} starts, {n_tokens}")
    device = _device(model)
    first = [tokenizer(s, add_special_tokens=False)["input_ids"][:1] for s in starts]
    if any(not ids for ids in first):
        raise InvalidRequest(f"a start text tokenizes to nothing: {list(starts)!r}")
    ids = torch.tensor(first, device=device)  # (B, 1): one token per row, so no padding is needed
    generator = torch.Generator(device=device).manual_seed(seed)
    out, past, step = [ids], None, ids
    for _ in range(n_tokens):
        result = model(input_ids=step, cache=past, use_cache=True)
        past = result.cache
        logits = result.logits[:, -1].float()  # (B, V)
        top = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
        choice = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=generator)  # (B, 1)
        step = top.indices.gather(-1, choice)
        out.append(step)
    return torch.cat(out, dim=1)


def sample_texts(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", starts: Sequence[str],
                 n_tokens: int, *, seed: int = 0, top_k: int = 50) -> list[str]:
    """The decoded texts of :func:`sample_token_ids` (special tokens dropped)."""
    ids = sample_token_ids(model, tokenizer, starts, n_tokens, seed=seed, top_k=top_k)
    return tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
