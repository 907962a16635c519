"""FT-L: train a low-rank delta ``ΔW = B A`` per edited ``down_proj`` so the model answers the fact in chat.

For each request, in order (each later request sees the earlier ones' deltas, applied by hooks):

1. rows — the rendered chat questions with the answer ``"{answer_prefix} {target}."`` (only the answer's
   tokens scored) and the anchors with the answers the model gives now (:mod:`editing.ft_l.pairs`);
2. A few Adam steps on ``A`` ``(r, in)`` and ``B`` ``(out, r)`` of every edited module minimise

       NLL(answer | question)
       + kl_factor · KL(p_before ‖ p_after) over the anchors' reference answers
       + preserve_weight · mean_p ‖ΔW k_p‖² / ‖W k_p‖²      (earlier edits' keys, ``preserve``)

   with ``‖B A‖_F`` clamped to ``max_norm_factor · ‖W‖_F`` after each step, and (``template_null_space``)
   the rows of ``A`` projected off the keys of the chat template's shared prefix (the default system turn,
   identical in every chat), so ``ΔW k = 0`` there: every other conversation starts from the same states.
   Because of that, the prefix's attention states are computed once per edit and reused as a cache by every
   step, and the LM head is applied only at the scored positions (an edit went from 30 s to 20 s on SmolLM2);
3. the keys k = the module's inputs at the answer positions, returned so later edits can preserve them.

The deltas reach the model only through :func:`editing.hooks.apply_deltas` (out-of-place hooks), and
gradients are taken for ``A`` and ``B`` alone. Invariant: the model at the end == the model at the
beginning (weights, train/eval flag, no ``.grad``); the edit exists only as the returned deltas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from editing.ft_l.hparams import FTLHyperParams
from editing.ft_l.pairs import Rows, anchor_rows, chat_prefix_ids, training_rows
from editing.hooks import apply_deltas, capture, find_module, inference_mode_of
from editing.requests import EditRequest, EditResult, LowRankDelta
from editing.rome.rome_main import checked_requests
from editing.stats import SecondMoments

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["compute_ft_l"]

log = logging.getLogger(__name__)


def compute_ft_l(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", requests: Sequence[EditRequest],
                 hparams: FTLHyperParams, *, stats: SecondMoments | None = None,
                 preserve: Mapping[str, torch.Tensor] | None = None) -> list[EditResult]:
    """One :class:`EditResult` (one rank-``hparams.rank`` delta per layer) per request; the model is untouched.

    ``stats`` is accepted for the common entry shape and not used (FT-L's constraint is the norm clamp
    and the KL term); ``preserve`` maps a module name to the ``(m, in)`` keys of earlier edits there.
    """
    requests = checked_requests(requests)
    modules = [hparams.rewrite_module_tmp.format(layer) for layer in hparams.layers]
    for name in modules:
        find_module(model, name)
    results: list[EditResult] = []
    with inference_mode_of(model):
        for request in requests:
            with apply_deltas(model, [d for r in results for d in r.deltas]):
                results.append(_fit(model, tokenizer, request, hparams, modules, preserve or {}))
    return results


PrefixStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (1, heads, P, d)


@torch.no_grad()
def _prefix_states(model: "PreTrainedModel", prefix: torch.Tensor | None) -> PrefixStates | None:
    """The attention keys/values of the shared chat prefix under the model as it is now (earlier edits in)."""
    from transformers import DynamicCache

    if prefix is None:
        return None
    cache = DynamicCache()
    model.base_model(input_ids=prefix, cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _head_logits(model: "PreTrainedModel", hidden: torch.Tensor) -> torch.Tensor | None:
    """The LM head on chosen hidden states; None for models whose head does more than a projection."""
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    head = model.get_output_embeddings()
    return None if head is None else head(hidden)


def _scored_logp(model: "PreTrainedModel", rows: Rows, past: PrefixStates | None = None) -> torch.Tensor:
    """``(S, V)`` log-probabilities at the scored positions only.

    The body runs on the rows (after the shared prefix, whose states ``past`` are reused when given) and
    the LM head only at the scored positions: the vocabulary is large, the scored positions few.
    """
    from transformers import DynamicCache

    ids, mask, cols, cache = rows.ids, rows.mask, rows.cols, None
    if rows.prefix is not None and past is None:
        ids, mask, cols = rows.full()
    elif rows.prefix is not None:
        n, p = ids.shape[0], rows.prefix.shape[1]
        cache = DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in past])
        mask = torch.cat([torch.ones(n, p, dtype=mask.dtype, device=mask.device), mask], dim=1)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=cache is not None)
    logits = _head_logits(model, hidden.last_hidden_state[rows.rows, cols])
    if logits is None:  # a head with soft-capping or scaling: the model's own forward
        full_ids, full_mask, full_cols = rows.full()
        logits = model(input_ids=full_ids, attention_mask=full_mask).logits[rows.rows, full_cols]
    return torch.log_softmax(logits.float(), dim=-1)


def _group_logp(model: "PreTrainedModel", groups: Sequence[Rows], past: PrefixStates | None) -> torch.Tensor:
    return torch.cat([_scored_logp(model, rows, past) for rows in groups])


def _nll(logp: torch.Tensor, groups: Sequence[Rows]) -> torch.Tensor:
    tokens = torch.cat([rows.tokens for rows in groups])
    return -logp.gather(1, tokens[:, None]).mean()


@torch.no_grad()
def _min_margin(logp: torch.Tensor, groups: Sequence[Rows]) -> float:
    """min over scored tokens of logp(token) − the best other logp: > 0 iff greedy reproduces every answer."""
    tokens = torch.cat([rows.tokens for rows in groups])[:, None]
    own = logp.gather(1, tokens)
    other = logp.scatter(1, tokens, float("-inf")).max(dim=1, keepdim=True).values
    return float((own - other).min())


def _new_deltas(model: "PreTrainedModel", modules: Sequence[str], rank: int, seed: int) -> list[LowRankDelta]:
    """LoRA's initialisation: A small and random (a private generator), B zero — so ΔW starts at 0."""
    generator = torch.Generator().manual_seed(seed)
    deltas = []
    for name in modules:
        weight = find_module(model, name).weight  # (out, in)
        out_f, in_f = weight.shape
        a = (torch.randn(rank, in_f, generator=generator) / in_f ** 0.5).to(weight.device)
        b = torch.zeros(out_f, rank, device=weight.device)
        deltas.append(LowRankDelta(name, A=a.requires_grad_(), B=b.requires_grad_()))
    return deltas


def _norm(delta: LowRankDelta) -> torch.Tensor:
    """‖B A‖_F without forming the (out, in) matrix: trace((BᵀB)(A Aᵀ))."""
    return torch.sqrt(torch.clamp(((delta.B.T @ delta.B) * (delta.A @ delta.A.T)).sum(), min=0.0))


def _preserve_penalty(model: "PreTrainedModel", deltas: Sequence[LowRankDelta],
                      preserve: Mapping[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros((), device=deltas[0].A.device) if deltas else torch.zeros(())
    for d in deltas:
        keys = preserve.get(d.module)
        if keys is None or len(keys) == 0:
            continue
        k = keys.to(d.A.device, d.A.dtype)  # (m, in), the deltas' dtype (fp32)
        weight = find_module(model, d.module).weight.detach()  # the model's dtype (bf16 on an accelerator)
        base = (k.to(weight.dtype) @ weight.T).float().norm(dim=1) ** 2  # (m,)
        moved = ((k @ d.A.T) @ d.B.T).norm(dim=1) ** 2  # (m,)
        total = total + (moved / base.clamp(min=1e-6)).mean()
    return total


def _fit(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
         hparams: FTLHyperParams, modules: Sequence[str], preserve: Mapping[str, torch.Tensor]) -> EditResult:
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    # The shared chat prefix is computed once only when the delta provably leaves its states alone.
    prefix = chat_prefix_ids(tokenizer) if hparams.template_null_space else []
    train = training_rows(tokenizer, request, include_plain=hparams.include_plain_prompt, device=device,
                          prefix=prefix)
    anchors = anchor_rows(model, tokenizer, request, hparams.anchor_questions, hparams.anchor_answer_tokens,
                          prefix=prefix)
    past = _prefix_states(model, next((r.prefix for r in train + anchors if r.prefix is not None), None))
    # The stop margin is taken over the chat answers (the rows that open with the chat prefix; all rows
    # when the template has none): the plain-text prompt is trained too but is not what the user asks.
    chat = [r for r in train if r.prefix is not None] or train
    n_chat = sum(len(r.tokens) for r in chat)
    with torch.no_grad():
        anchor_ref = _group_logp(model, anchors, past)  # (S_a, V) the answers as the model gives them now
        nll_before = float(_nll(_group_logp(model, train, past), train))
    deltas = _new_deltas(model, modules, hparams.rank, hparams.seed)
    bases = _template_bases(model, tokenizer, modules) if hparams.template_null_space else {}
    _project(deltas, bases)
    params = [t for d in deltas for t in (d.A, d.B)]
    optimizer = torch.optim.Adam(params, lr=hparams.lr)
    max_norms = [hparams.max_norm_factor * find_module(model, d.module).weight.detach().norm() for d in deltas]
    steps, nll = 0, torch.tensor(nll_before)
    with apply_deltas(model, deltas):
        for _ in range(hparams.num_steps):
            logp = _group_logp(model, train, past)
            nll, margin = _nll(logp, train), _min_margin(logp[:n_chat], chat)
            if nll.item() < hparams.stop_nll or (hparams.stop_margin is not None and margin >= hparams.stop_margin):
                break
            kl = F.kl_div(_group_logp(model, anchors, past), anchor_ref, log_target=True, reduction="batchmean")
            loss = nll + hparams.kl_factor * kl + hparams.preserve_weight * _preserve_penalty(model, deltas, preserve)
            # Gradients for A and B only: the model's parameters get no .grad and are never updated.
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
            steps += 1
            log.debug("ft_l %s step %d: nll %.3f margin %.2f kl %.4f", request.key or request.text, steps, nll.item(),
                      margin, kl.item())
            with torch.no_grad():  # the constraint of FT-L: ‖ΔW‖ stays a small fraction of ‖W‖
                _project(deltas, bases)
                for d, limit in zip(deltas, max_norms):
                    norm = _norm(d)
                    if norm > limit:
                        d.B.mul_(limit / norm)
        with torch.no_grad():
            nll_after = float(_nll(_group_logp(model, train, past), train))
    frozen = tuple(LowRankDelta(d.module, A=d.A.detach().cpu(), B=d.B.detach().cpu()) for d in deltas)
    return EditResult(request, "ft_l", frozen, keys=_answer_keys(model, train, modules), metrics={
        "nll_before": nll_before, "nll_after": nll_after, "steps": steps,
        "delta_norm": float(sum(_norm(d) for d in frozen)), "seconds": time.perf_counter() - t0})


@torch.no_grad()
def _answer_keys(model: "PreTrainedModel", groups: Sequence[Rows], modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per module, ``(n_rows, in)``: its input at each row's scored positions, averaged per row."""
    keys: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    for rows in groups:
        ids, mask, cols = rows.full()
        n_rows = ids.shape[0]
        for name in modules:
            with capture(model, name, what="input") as seen:
                model.base_model(input_ids=ids, attention_mask=mask)
            at = seen[0][rows.rows, cols].float()  # (S, in)
            summed = torch.zeros(n_rows, at.shape[1]).index_add_(0, rows.rows.cpu(), at.cpu())
            counts = torch.bincount(rows.rows.cpu(), minlength=n_rows).clamp(min=1)[:, None]
            keys[name].append(summed / counts)
    return {name: torch.cat(parts) for name, parts in keys.items()}


@torch.no_grad()
def _template_bases(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                    modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per module, an orthonormal basis ``(in, n)`` of its inputs over the chat template's shared prefix."""
    prefix = chat_prefix_ids(tokenizer)  # the same tokens open every chat (e.g. the default system turn)
    if not prefix:
        return {}
    ids = torch.tensor([prefix], device=next(model.parameters()).device)
    bases = {}
    for name in modules:
        with capture(model, name, what="input") as seen:
            model.base_model(input_ids=ids)
        keys = seen[0][0].float()  # (n, in)
        u, s, _ = torch.linalg.svd(keys.T, full_matrices=False)  # u: (in, n)
        bases[name] = u[:, s > s.max() * 1e-4]
    return bases


@torch.no_grad()
def _project(deltas: Sequence[LowRankDelta], bases: Mapping[str, torch.Tensor]) -> None:
    """A ← A − (A Q) Qᵀ: the delta reads nothing in the span of the template keys."""
    for d in deltas:
        q = bases.get(d.module)
        if q is not None:
            d.A.sub_((d.A @ q) @ q.T)
