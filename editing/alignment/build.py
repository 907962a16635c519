"""The whole pole-training run, as ``pllm align train`` runs it: pairs per dimension, then DPO per pole, saved.

Poles already trained for the base model are skipped (unless ``force``): they are trained once per base model
and shared by every user of it. The base model's instructed answers are kept beside the poles and reused by a
retrain with the same prompts and generation settings (on a CPU they are most of the run's time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from editing.alignment.config import PoleTrainConfig
from editing.alignment.pairs import dimension_answers, pairs_for
from editing.alignment.poles import Pole, all_poles
from editing.alignment.prompts import TRAIN_PROMPTS
from editing.alignment.store import PoleStore
from editing.alignment.train import train_pole
from editing.errors import InvalidRequest

if TYPE_CHECKING:  # pragma: no cover
    from editing.runtime import LocalModel

__all__ = ["TrainRun", "train_poles"]

log = logging.getLogger(__name__)

# (stage, pole key or dimension, step done, total steps, loss): stage "pairs" (step = dimension's prompts) or "dpo"
RunProgress = Callable[[str, str, int, int, float], None]


@dataclass
class TrainRun:
    """What a run did: the poles trained (key → pairs, first and last DPO loss, seconds) and those skipped."""

    base_model_id: str
    trained: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{k}: {v['n_pairs']:.0f} pairs, DPO loss {v['loss_first']:.3f} → {v['loss_last']:.3f}, "
                 f"{v['seconds']:.0f} s" for k, v in self.trained.items()]
        if self.skipped:
            parts.append(f"already trained: {', '.join(self.skipped)}")
        return "; ".join(parts) or "nothing to do"


def train_poles(local: "LocalModel", store: PoleStore, scores: Callable[[str], Mapping[str, float]], *,
                poles: Sequence[Pole] | None = None, config: PoleTrainConfig | None = None, force: bool = False,
                prompts: Sequence[str] | None = None, progress: RunProgress | None = None) -> TrainRun:
    """Train the ``poles`` (every pole of every dimension by default) for ``local``'s base model into ``store``.

    Pairs come from ``local``'s model (greedy, read-only), checked with ``scores`` (a reply's score per dimension;
    pllm passes :func:`memory.preferences.reply_scores`); DPO trains a fresh copy loaded from ``local.source``.
    """
    config = config or PoleTrainConfig()
    wanted = list(poles or all_poles())
    if not wanted:
        raise InvalidRequest("no poles to train")
    run = TrainRun(local.model_id)
    t0 = time.perf_counter()
    todo = []
    for pole in wanted:
        if not force and store.meta(local.model_id, pole) is not None:
            run.skipped.append(pole.key)
        else:
            todo.append(pole)
    for dim in dict.fromkeys(p.dimension for p in todo):
        if progress:
            progress("pairs", dim, 0, 1, float("nan"))
        chosen = tuple(prompts if prompts is not None else TRAIN_PROMPTS[:config.n_prompts])
        answers = store.load_answers(local.model_id, dim, chosen, config)
        if answers is None:
            answers = dimension_answers(local.model, local.tokenizer, dim, scores, prompts=chosen, config=config)
            store.save_answers(local.model_id, answers, config)
        if progress:
            progress("pairs", dim, 1, 1, float("nan"))
        for pole in (p for p in todo if p.dimension == dim):
            pairs = pairs_for(pole, answers)

            def step(done: int, total: int, loss: float, key: str = pole.key) -> None:
                if progress:
                    progress("dpo", key, done, total, loss)

            adapter = train_pole(local.source, local.tokenizer, pole, pairs, base_model_id=local.model_id,
                                 config=config, progress=step, device=str(local.plan.device))
            store.save(adapter)
            run.trained[pole.key] = {"n_pairs": float(adapter.n_pairs), "loss_first": adapter.losses[0],
                                     "loss_last": adapter.losses[-1], "seconds": adapter.seconds}
    run.seconds = time.perf_counter() - t0
    log.info("pole training on %s: %s", local.model_id, run.summary())
    return run
