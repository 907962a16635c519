"""A user's preference layer: their pole adapters combined by their weights (PEFT ``add_weighted_adapter``).

``cat`` (the default) is exact: PEFT stacks the poles' LoRA factors, each ``A`` scaled by its weight and its
pole's ``alpha / r``, into one LoRA of the summed rank with scaling 1, so ``ΔW = Σ_p w_p · ΔW_p``. ``svd`` folds the
same sum back to ``svd_rank`` by a truncated SVD (smaller, approximate). The result is a list of
:class:`~editing.requests.LowRankDelta` (scaling 1): the form the user's published adapter concatenates with
their knowledge edits and style layer.

PEFT merges adapters that are loaded on a model: the poles are loaded onto the given model (the update worker's
private copy) for the merge and unloaded after it — also when the merge fails — which puts back the model's own
modules, untouched (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from editing.alignment.poles import Pole
from editing.alignment.store import PoleStore
from editing.errors import InvalidRequest
from editing.requests import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel

__all__ = ["Combination", "lora_state_deltas", "merge_poles", "pole_from_key"]

log = logging.getLogger(__name__)

Combination = Literal["cat", "svd"]
_MERGED = "pllm_preference"
_PREFIX = "base_model.model."


def lora_state_deltas(state: Mapping[str, "torch.Tensor"], scaling: float) -> list[LowRankDelta]:
    """A PEFT LoRA state dict (keys as PEFT saves them) as deltas on CPU, ``scaling`` (alpha / r) folded into B."""
    deltas = []
    for key in sorted(k for k in state if k.endswith(".lora_A.weight")):
        module = key[len(_PREFIX):-len(".lora_A.weight")]
        A = state[key].detach().to("cpu").float().clone()  # (r, in)
        B = state[key.replace(".lora_A.", ".lora_B.")].detach().to("cpu").float() * scaling  # (out, r)
        deltas.append(LowRankDelta(module, A, B))
    return deltas


def pole_from_key(key: str) -> Pole:
    """``"verbosity.concise"`` → that :class:`Pole`."""
    from editing.alignment.poles import all_poles

    for pole in all_poles():
        if pole.key == key:
            return pole
    raise InvalidRequest(f"unknown pole {key!r}; known: {[p.key for p in all_poles()]}")


def merge_poles(model: "PreTrainedModel", store: PoleStore, base_model_id: str, mix: Mapping[str, float], *,
                combination: Combination = "cat", svd_rank: int | None = None) -> list[LowRankDelta]:
    """``Σ_p mix[p] · ΔW_p`` over the pole adapters named in ``mix`` (pole key → weight), as low-rank deltas.

    An empty ``mix`` gives no deltas. A pole that is not trained for ``base_model_id``, or is corrupt, raises
    :class:`~editing.errors.InvalidRequest` before the model is touched.
    """
    from peft import PeftModel, get_peft_model_state_dict

    if combination not in ("cat", "svd"):
        raise InvalidRequest(f"combination must be 'cat' (exact) or 'svd', got {combination!r}")
    items = [(pole_from_key(k), float(w)) for k, w in mix.items() if w != 0]
    if not items:
        return []
    for pole, _ in items:  # fail before the model is wrapped
        store.load(base_model_id, pole)
    names = [pole.key.replace(".", "_") for pole, _ in items]
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    training = model.training
    peft_model = None
    try:
        for name, (pole, _) in zip(names, items):
            folder = str(store.folder(base_model_id, pole))
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, folder, adapter_name=name, is_trainable=False)
            else:
                peft_model.load_adapter(folder, adapter_name=name, is_trainable=False)
        assert peft_model is not None
        kwargs = {"svd_rank": svd_rank} if combination == "svd" else {}
        peft_model.add_weighted_adapter(names, [w for _, w in items], _MERGED, combination_type=combination, **kwargs)
        state = get_peft_model_state_dict(peft_model, adapter_name=_MERGED)
        scaling = peft_model.peft_config[_MERGED].lora_alpha / peft_model.peft_config[_MERGED].r
    finally:
        if peft_model is not None:
            peft_model.unload()  # the model's own modules back, nothing merged into them
        for name, p in model.named_parameters():  # PEFT froze them for inference: as they were
            p.requires_grad_(flags.get(name, p.requires_grad))
        model.train(training)
    deltas = lora_state_deltas(state, scaling)
    log.info("merged poles %s (%s) into %d module deltas", {p.key: w for p, w in items}, combination, len(deltas))
    return deltas
