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

Served (``PLLM_STYLE_MERGE=mod``): the user's published version records the poles and weights instead of a
merged layer, :class:`PoleFusion` puts them on the user's view, and :class:`~editing.LocalModel` decodes such a
view with :func:`fused_stream` (its own loop: it does not join other users' batches).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from editing.errors import InvalidRequest
from editing.generation import GenerationSettings
from editing.requests import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from editing.adapters import UserView
    from editing.alignment.store import PoleStore
    from editing.alignment.train import PoleAdapter

__all__ = ["Mix", "PoleFusion", "fused_decode", "fused_pieces", "fused_stream", "pole_deltas"]

log = logging.getLogger(__name__)

# One request's policies: [(λ_p, the pole's deltas), ...]; the base policy is implicit.
Mix = Sequence[tuple[float, Sequence[LowRankDelta]]]


def pole_deltas(adapter: "PoleAdapter") -> list[LowRankDelta]:
    """A trained pole as deltas with its ``alpha / r`` folded in."""
    from editing.alignment.merge import lora_state_deltas

    return lora_state_deltas(adapter.state, float(adapter.peft_config["lora_alpha"]) / float(adapter.peft_config["r"]))


def fused_decode(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[torch.Tensor],
                 mixes: Sequence[Mix], settings: GenerationSettings | None = None,
                 base_deltas: Sequence[Sequence[LowRankDelta]] | None = None) -> list[str]:
    """The reply to each prompt (``(1, T)`` ids) decoded from the fused policies of its mix.

    ``base_deltas[i]``: request ``i``'s own layers (edits, style), in every one of its rows. A request with an
    empty mix decodes exactly as the base policy alone.
    """
    pieces: list[list[str]] = [[] for _ in prompts]
    for g, piece in fused_pieces(model, tokenizer, prompts, mixes, settings, base_deltas):
        pieces[g].append(piece)
    return ["".join(p) for p in pieces]


def fused_stream(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", input_ids: torch.Tensor, mix: Mix,
                 settings: GenerationSettings | None = None, base_deltas: Sequence[LowRankDelta] = ()) -> Iterator[str]:
    """One request's reply, piece by piece as it is decoded, from the fused policies of ``mix``."""
    for _, piece in fused_pieces(model, tokenizer, [input_ids], [mix], settings, [base_deltas]):
        yield piece


@torch.inference_mode()
def fused_pieces(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[torch.Tensor],
                 mixes: Sequence[Mix], settings: GenerationSettings | None = None,
                 base_deltas: Sequence[Sequence[LowRankDelta]] | None = None) -> Iterator[tuple[int, str]]:
    """``(request, text)`` pieces of every request's reply as :func:`fused_decode` decodes them (empty pieces
    skipped; a request's pieces joined are its reply)."""
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
            if piece := texts[g].push(next_id):
                yield g, piece
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
    for g, text in enumerate(texts):
        if tail := text.finish():
            yield g, tail


class PoleFusion:
    """Serving-side MOD: a user's view gains the fused pole policies its published version asks for.

    A version published with ``combination: "mod"`` holds no preference deltas; its preference record names the
    poles (``merged``) and their weights (``mix``). :meth:`apply` turns that record into the view's ``fusion``
    (each pole read from ``store`` the first time a record with its fingerprint is served, then kept). A pole
    that cannot be loaded then (deleted, corrupt) is logged and the user is served their other layers: a broken
    pole must not break the reply.
    """

    def __init__(self, store: "PoleStore") -> None:
        self.store = store
        self._lock = threading.Lock()
        self._poles: dict[tuple[str, str, str], tuple[LowRankDelta, ...]] = {}  # (base, pole, fingerprint)

    def _pole(self, base_model_id: str, key: str, fingerprint: str) -> tuple[LowRankDelta, ...]:
        from editing.alignment.merge import pole_from_key

        cache_key = (base_model_id, key, fingerprint)
        with self._lock:
            found = self._poles.get(cache_key)
        if found is None:
            found = tuple(pole_deltas(self.store.load(base_model_id, pole_from_key(key))))
            with self._lock:
                if len(self._poles) > 32:
                    self._poles.clear()
                self._poles[cache_key] = found
        return found

    def apply(self, view: "UserView | None") -> "UserView | None":
        """``view`` with its fusion set when its version's preference layer is fused at decoding time."""
        if view is None:
            return None
        pref = view.extra.get("preference")
        if not isinstance(pref, Mapping) or pref.get("combination") != "mod" or not pref.get("merged"):
            return view
        mix = pref.get("mix") or {}
        fingerprint = str(pref.get("poles", ""))
        try:
            fusion = [(float(mix[k]), self._pole(view.base_model_id, str(k), fingerprint)) for k in pref["merged"]]
        except (InvalidRequest, KeyError, TypeError, ValueError) as err:
            log.warning("user %s, adapter v%d: its fused poles %s cannot be loaded (%s); serving their other layers "
                        "without them (`pllm align train` re-trains a pole)", view.user_id, view.version,
                        pref.get("merged"), err)
            return view
        return view.with_fusion(fusion)
