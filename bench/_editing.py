"""CounterFact cases and their scores, shared by the knowledge-editing benches.

Scored without a judge, as ``../shared/data/README.md`` says: efficacy (P(target_new) > P(ground_truth)
on the edit prompt, by mean log-probability per token; and top-1 token accuracy of target_new under
teacher forcing), generalization (the same on ``rephrase_prompt``), locality (the model's top-1
predictions over ``locality_ground_truth`` on ``locality_prompt`` unchanged by the edit).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench._data import require

log = logging.getLogger("bench.editing")


@dataclass(frozen=True)
class Case:
    request: Any  # editing.EditRequest
    ground_truth: str
    rephrase: str
    locality_prompt: str
    locality_truth: str


def load_counterfact(path: Path, limit: int | None) -> tuple[list[Case], int]:
    """The cases whose subject occurs in the prompt (as the edit needs), and how many were skipped."""
    from editing import EditRequest

    items = json.loads(require(path, "CounterFact edits").read_text())
    cases, skipped = [], 0
    for item in items:
        if item["subject"] not in item["prompt"]:
            skipped += 1
            continue
        prompt = item["prompt"].replace(item["subject"], "{}", 1)
        if prompt.count("{") != 1 or prompt.count("}") != 1:  # other braces would break str.format
            skipped += 1
            continue
        cases.append(Case(EditRequest(prompt=prompt, subject=item["subject"], target_new=item["target_new"],
                                      target_old=item["ground_truth"]), item["ground_truth"],
                          item["rephrase_prompt"], item["locality_prompt"], item["locality_ground_truth"]))
        if limit is not None and len(cases) >= limit:
            break
    return cases, skipped


@torch.no_grad()
def _forced(model: Any, tok: Any, prompt: str, target: str) -> tuple[float, torch.Tensor, list[int]]:
    """(mean log-prob per target token, top-1 predictions at the target positions, the target ids)."""
    from editing.rome.prompts import target_ids

    p_ids = tok(prompt)["input_ids"]
    t_ids = target_ids(tok, target)
    ids = torch.tensor([p_ids + t_ids], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0, len(p_ids) - 1: len(p_ids) - 1 + len(t_ids)].float()  # (n_t, V)
    logp = torch.log_softmax(logits, dim=-1)[torch.arange(len(t_ids)), t_ids]
    return float(logp.mean()), logits.argmax(dim=-1).cpu(), t_ids


def score(model: Any, tok: Any, case: Case) -> dict[str, Any]:
    """The per-case figures on the model as it runs now (with whatever deltas are hooked in)."""
    figures: dict[str, Any] = {}
    for name, prompt in (("efficacy", case.request.text), ("generalization", case.rephrase)):
        new_lp, new_top, new_ids = _forced(model, tok, prompt, case.request.target_new)
        old_lp, _, _ = _forced(model, tok, prompt, case.ground_truth)
        figures[name] = float(new_lp > old_lp)
        figures[f"{name}_top1"] = float((new_top == torch.tensor(new_ids)).float().mean())
    _, loc_top, loc_ids = _forced(model, tok, case.locality_prompt, case.locality_truth)
    figures["locality_top"] = loc_top
    figures["locality_top1"] = float((loc_top == torch.tensor(loc_ids)).float().mean())
    return figures


def aggregate(pre: Sequence[dict[str, Any]], post: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """(after the edit, before it): means over cases; locality = share of top-1 predictions unchanged."""
    keys = ["efficacy", "efficacy_top1", "generalization", "generalization_top1", "locality_top1"]
    after = {k: round(statistics.mean(p[k] for p in post), 4) for k in keys}
    before = {k: round(statistics.mean(p[k] for p in pre), 4) for k in keys}
    after["locality"] = round(statistics.mean(float((a["locality_top"] == b["locality_top"]).float().mean())
                                              for a, b in zip(post, pre)), 4)
    before["locality"] = 1.0  # by definition: the unedited model agrees with itself
    return after, before


def score_all(lm: Any, cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Every case's figures on the model as it runs now."""
    return [score(lm.model, lm.tokenizer, case) for case in cases]


def default_hparams(lm: Any, method: str) -> Any:
    """The method's default hyper-parameters, with ROME-style context prefixes generated once for all edits."""
    from editing import METHODS, with_fixed_prefixes
    from editing.rome.hparams import ValueHyperParams

    hparams = METHODS[method].hparams()
    if isinstance(hparams, ValueHyperParams):
        hparams = with_fixed_prefixes(lm.model, lm.tokenizer, hparams)
    return hparams


def edit_each(lm: Any, cases: Sequence[Case], method: str, hparams: Any, *,
              stats: Any = None) -> tuple[list[dict], list[float], list[float]]:
    """Edit each case alone (its deltas hooked in only while it is scored): post scores, then wall and CPU
    seconds per edit. ``stats`` (an ``editing.SecondMoments``) gives the methods that use them key statistics.

    The seconds are the whole call of the method, not only the part a method reports in its own metrics.
    CPU seconds (this process) are given beside the wall time because a shared machine stretches the latter.
    """
    from editing import apply_deltas, get_method

    compute = get_method(method).compute
    post, wall, cpu = [], [], []
    for i, case in enumerate(cases, 1):
        t0, c0 = time.perf_counter(), time.process_time()
        [result] = compute(lm.model, lm.tokenizer, [case.request], hparams, stats=stats)
        _finish(lm.model)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        with apply_deltas(lm.model, result.deltas):
            post.append(score(lm.model, lm.tokenizer, case))
        if i % 20 == 0 or i == len(cases):
            log.info("%s: %d/%d edits, %.2f s per edit so far", method, i, len(cases), statistics.mean(wall))
    return post, wall, cpu


def prefetch_statistics(stats: Any, all_hparams: Any) -> None:
    """Measure (or load) C for every module the methods' updates use (ROME's layer, MEMIT's layers)."""
    wanted: dict[int, set[str]] = {}
    for hp in all_hparams:
        if not hasattr(hp, "mom2_n_tokens"):
            continue  # FT-L: no key statistics
        layers = getattr(hp, "layers", None) or (hp.layer,)
        wanted.setdefault(hp.mom2_n_tokens, set()).update(hp.rewrite_module_tmp.format(i) for i in layers)
    for n_tokens, modules in wanted.items():
        stats.prefetch(sorted(modules), n_tokens)


def _finish(model: Any) -> None:
    """Wait for the model's device to finish queued work (kernels run asynchronously on an accelerator)."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


def run_edits(lm: Any, cases: Sequence[Case], method: str, hparams: Any) -> tuple[list[dict], list[dict], list[float]]:
    """Pre scores, then :func:`edit_each`: (pre, post, seconds)."""
    pre = score_all(lm, cases)
    post, seconds, _ = edit_each(lm, cases, method, hparams)
    return pre, post, seconds


def percent(figures: dict[str, float], keys: Sequence[str] = ("efficacy", "generalization", "locality")) -> dict[str, float]:
    """The named shares (0-1) as percentages (0-100), one decimal."""
    return {k: round(100 * figures[k], 1) for k in keys}
