"""v*: the output the edited module must give at the subject's last token so the model says the new target.

A vector δ is added (by a hook, never into the weights) to the output of ``module`` at the subject's last
token of every rewriting prompt — ``prefix + prompt + target[:-1]`` for each context prefix — and of the
essence prompt (``kl_prompt``, e.g. "{subject} is a"). A few Adam steps minimise

    NLL(target_new | rewriting prompts)
    + kl_factor · KL(p_before ‖ p_after) on the essence prompt's next token   (keep what the subject is)
    + v_weight_decay · (‖δ‖ / ‖v_init‖)²

with ‖δ‖ clamped to ``clamp_norm_factor · ‖v_init‖`` after each step. v* = v_init + δ, where v_init is the
module's output at the subject on the plain prompt. ROME hooks the MLP output of its layer; MEMIT hooks
the residual stream after its last layer — the same optimisation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from editing.hooks import add_at_positions, capture
from editing.requests import EditRequest
from editing.rome.hparams import ValueHyperParams
from editing.rome.prompts import encode_at_subject, pad_batch, request_encodings, target_ids

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TargetValue", "compute_v"]


@dataclass(frozen=True)
class TargetValue:
    delta: torch.Tensor  # δ (d,), float32
    v_init: torch.Tensor  # the module's output at the subject, plain prompt, before the edit (d,)
    nll_before: float  # mean NLL per target token over the rewriting prompts, before / after
    nll_after: float
    steps: int  # Adam updates made (fewer than v_num_grad_steps when the target became likely early)
    seconds: float

    @property
    def v_star(self) -> torch.Tensor:
        return self.v_init + self.delta


@dataclass(frozen=True)
class _Batch:
    ids: torch.Tensor  # (R + 1, T) rewriting prompts, then the essence prompt
    mask: torch.Tensor
    subject_last: list[int]  # per row
    scored: torch.Tensor  # (R + 1, T) bool: the positions whose logits are scored — R · n_target, then 1
    target_tokens: torch.Tensor  # (R · n_target,) the token each scored rewriting position must predict


def _batch(tokenizer: "PreTrainedTokenizerBase", request: EditRequest, prefixes: Sequence[str], kl_prompt: str,
           device: torch.device) -> _Batch:
    target = target_ids(tokenizer, request.target_new)
    rewrite = request_encodings(tokenizer, request, prefixes)
    essence = encode_at_subject(tokenizer, "", kl_prompt, request.subject)
    rows = [e.ids + target[:-1] for e in rewrite] + [essence.ids]
    ids, mask = pad_batch(rows, device)
    scored = torch.zeros_like(mask, dtype=torch.bool)
    for r, e in enumerate(rewrite):
        scored[r, len(e.ids) - 1: len(e.ids) - 1 + len(target)] = True  # logits at p predict token p + 1
    scored[len(rewrite), len(essence.ids) - 1] = True  # the essence prompt's next token
    return _Batch(ids, mask, [e.subject_last for e in rewrite] + [essence.subject_last], scored,
                  torch.tensor(target * len(rewrite), device=device))


def _losses(model: "PreTrainedModel", b: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean target NLL over rewriting prompts, log-probs of the essence prompt's next token (V,))."""
    # Project only the scored positions onto the vocabulary (a boolean logits_to_keep, rows in order): the
    # vocabulary is large, the prompts are not — this saves most of the LM head, forward and backward.
    logits = model(input_ids=b.ids, attention_mask=b.mask, logits_to_keep=b.scored).logits  # (R · n_target + 1, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp[:-1].gather(1, b.target_tokens[:, None]).mean()
    return nll, logp[-1]


def compute_v(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
              hparams: ValueHyperParams, *, module: str, prefixes: Sequence[str]) -> TargetValue:
    """Optimise δ at ``module``'s output (see the module docstring). ``prefixes[0]`` must be ``""``."""
    if not prefixes or prefixes[0] != "":
        raise ValueError("prefixes must start with the empty prefix (the plain prompt)")
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    b = _batch(tokenizer, request, prefixes, hparams.kl_prompt, device)
    with torch.no_grad(), capture(model, module, what="output") as seen:
        nll_before, kl_ref = _losses(model, b)  # kl_ref: the essence distribution before the edit
    v_init = seen[0][0, b.subject_last[0]].float()  # (d,)
    delta = torch.zeros_like(v_init, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hparams.v_lr)
    max_norm = hparams.clamp_norm_factor * v_init.norm()
    steps = 0  # Adam updates made
    with add_at_positions(model, module, delta, b.subject_last):
        while True:  # one forward per step; the last forward (no update after it) gives nll_after
            nll, essence = _losses(model, b)
            if steps == hparams.v_num_grad_steps or nll.item() < hparams.v_stop_nll:
                break  # out of steps, or the target is likely enough: more steps would only grow δ
            kl = F.kl_div(essence, kl_ref, log_target=True, reduction="sum")  # KL(before ‖ after)
            decay = hparams.v_weight_decay * (delta.norm() / v_init.norm()) ** 2
            loss = nll + hparams.kl_factor * kl + decay
            # Gradient for δ only: the model's parameters get no .grad and are never updated.
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            optimizer.step()
            steps += 1
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return TargetValue(delta.detach(), v_init, float(nll_before), float(nll.detach()), steps, time.perf_counter() - t0)
