"""MOD-style logit fusion: the user's poles combined at decoding time instead of in the weights.

Multi-Objective Decoding (Shi et al., 2024) samples from ``softmax(Σ_i λ_i · log π_i(y | x))`` over policies
aligned to different objectives. Here the policies are the base model (with the user's other layers: edits and
style) and the base model with each pole the user leans to; a user's weights give ``λ_p = |w_d|`` for the pole
``p`` their weight on dimension ``d`` leans to and ``λ_base = 1 - Σ λ_p``::

    log p(y) = log π_base(y) + Σ_p λ_p · (log π_p(y) - log π_base(y))

(with two poles at full weight ``λ_base`` is -1: the fusion then extrapolates, as MOD allows). One decode loop
runs every policy of every request as a batch row (each row with its own deltas, as in
:mod:`editing.batch_decode`); all rows of a request take the same fused token. It costs one row per policy,
where the weight merge (:mod:`editing.alignment.merge`) costs none — ``bench/align_control.py`` measures both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from editing.errors import InvalidRequest
from editing.generation import GenerationSettings
from editing.requests import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from editing.alignment.train import PoleAdapter

__all__ = ["Mix", "fused_decode", "pole_deltas"]

# One request's policies: [(λ_p, the pole's deltas), ...]; the base policy is implicit.
Mix = Sequence[tuple[float, Sequence[LowRankDelta]]]


def pole_deltas(adapter: "PoleAdapter") -> list[LowRankDelta]:
    """A trained pole as deltas with its ``alpha / r`` folded in."""
    from editing.alignment.merge import lora_state_deltas

    return lora_state_deltas(adapter.state, float(adapter.peft_config["lora_alpha"]) / float(adapter.peft_config["r"]))


@torch.inference_mode()
def fused_decode(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[torch.Tensor],
                 mixes: Sequence[Mix], settings: GenerationSettings | None = None,
                 base_deltas: Sequence[Sequence[LowRankDelta]] | None = None) -> list[str]:
    """The reply to each prompt (``(1, T)`` ids) decoded from the fused policies of its mix.

    ``base_deltas[i]``: request ``i``'s own layers (edits, style), in every one of its rows. A request with an
    empty mix decodes exactly as the base policy alone.
    """
    from editing.batch_decode import BatchDecoder, _check_batch, _left_pad
    from editing.generation import Decoder, _processors, _TextStream, eos_token_ids

    settings = settings or GenerationSettings()
    if len(mixes) != len(prompts):
        raise InvalidRequest(f"got {len(mixes)} mixes for {len(prompts)} prompts: give one (possibly empty) per prompt")
    base = list(base_deltas) if base_deltas is not None else [() for _ in prompts]
    if len(base) != len(prompts):
        raise InvalidRequest(f"got {len(base)} base_deltas entries for {len(prompts)} prompts")
    _check_batch(prompts, base)
    row_prompts, rows, groups = [], [], []  # groups[g] = (first row, λ per pole row)
    for g, (ids, mix) in enumerate(zip(prompts, mixes)):
        lambdas = [float(w) for w, _ in mix]
        groups.append((len(rows), lambdas))
        row_prompts.append(ids)
        rows.append(tuple(base[g]))
        for _, deltas in mix:
            row_prompts.append(ids)
            rows.append(tuple(base[g]) + tuple(deltas))
    decoder = BatchDecoder(model, tokenizer)
    row_prompts = decoder._on_model(row_prompts)  # a tokenizer's CPU ids, a model on any device
    input_ids, pads = _left_pad(row_prompts, decoder._pad_id())
    width, device = input_ids.shape[1], input_ids.device
    processors = _processors(settings)
    generators = [None] * len(prompts)
    if not settings.greedy and settings.seed is not None:
        generators = [torch.Generator(device=device).manual_seed(settings.seed) for _ in prompts]
    stop_ids = set() if settings.ignore_eos else eos_token_ids(model, tokenizer)
    lengths = [ids.shape[1] for ids in prompts]
    seen = [torch.cat([ids, ids.new_empty((1, settings.max_new_tokens))], dim=1) for ids in prompts]
    texts = [_TextStream(tokenizer, settings.stop) for _ in prompts]
    pieces: list[list[str]] = [[] for _ in prompts]

    stacks = decoder._stacks(rows)
    logits, cache = decoder._prefill(input_ids, pads, stacks, {})
    step = decoder._step(cache, width + settings.max_new_tokens, pads, rows, stacks, {})
    position = {r: r for r in range(len(rows))}  # request row → its position in the running batch
    active = list(range(len(prompts)))
    for n in range(settings.max_new_tokens):
        logp = torch.log_softmax(logits.float(), dim=-1)  # (rows running, V)
        keep_groups, tokens = [], []
        for g in active:
            first, lambdas = groups[g]
            base_lp = logp[position[first]]
            fused = base_lp.clone()
            for k, lam in enumerate(lambdas, start=1):
                fused += lam * (logp[position[first + k]] - base_lp)
            start = 0 if settings.penalize_prompt else lengths[g]
            next_id = Decoder._choose(fused.unsqueeze(0), seen[g][:, start: lengths[g] + n], processors, settings,
                                      generators[g])
            if next_id in stop_ids:
                continue
            seen[g][0, lengths[g] + n] = next_id
            pieces[g].append(texts[g].push(next_id))
            if not texts[g].stopped:
                keep_groups.append(g)
                tokens.append(next_id)
        if not keep_groups or n + 1 == settings.max_new_tokens:
            break
        keep_rows, row_tokens = [], []
        for g, tok in zip(keep_groups, tokens):
            first, lambdas = groups[g]
            for r in range(first, first + 1 + len(lambdas)):
                keep_rows.append(position[r])
                row_tokens.append(tok)
        if len(keep_groups) < len(active):
            step.select(torch.tensor(keep_rows, device=device))
            running = [r for g in keep_groups for r in range(groups[g][0], groups[g][0] + 1 + len(groups[g][1]))]
            position = {r: i for i, r in enumerate(running)}
            active = keep_groups
        token = torch.tensor(row_tokens, dtype=input_ids.dtype, device=device).unsqueeze(1)  # (rows running, 1)
        logits = step(token, width + n)
    return ["".join(p) + text.finish() for p, text in zip(pieces, texts)]

