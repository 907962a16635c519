"""Preference pairs built offline from the base model itself (context distillation).

For each prompt and dimension the base model answers twice, once under each pole's instruction in the system
prompt (:data:`editing.alignment.poles.INSTRUCTIONS`). For a pole's adapter the answer given under its own
instruction is *chosen* and the opposite pole's answer *rejected*; the pair's prompt holds the question alone,
so DPO teaches the style without the instruction. A pair is kept only when the two answers' scores on the
dimension differ in the instructed direction — a pair where the instruction did not take hold would teach the
opposite. The scores are the caller's (pllm passes :func:`memory.preferences.reply_scores`, the same scores the
user's weights are computed from).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from editing.alignment.config import PoleTrainConfig
from editing.alignment.poles import Pole, pole_of
from editing.alignment.prompts import TRAIN_PROMPTS
from editing.errors import InvalidRequest

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DimensionAnswers", "PreferencePair", "dimension_answers", "pairs_for"]

log = logging.getLogger(__name__)

Scores = Callable[[str], Mapping[str, float]]


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example: the question, the chosen and the rejected answer."""

    prompt: str
    chosen: str
    rejected: str

    def as_row(self) -> dict[str, list[dict[str, str]]]:
        """TRL's conversational preference format."""
        return {"prompt": [{"role": "user", "content": self.prompt}],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


@dataclass(frozen=True)
class DimensionAnswers:
    """The base model's answers to each prompt under the first and the second pole's instruction, with the
    dimension's score of each, and which prompts passed the direction check."""

    dimension: str
    prompts: tuple[str, ...]
    first: tuple[str, ...]
    second: tuple[str, ...]
    first_scores: tuple[float, ...]
    second_scores: tuple[float, ...]

    @property
    def kept(self) -> tuple[int, ...]:
        """Indices whose second-pole answer scores higher than the first-pole answer (and both are non-empty)."""
        return tuple(i for i in range(len(self.prompts))
                     if self.first[i].strip() and self.second[i].strip() and self.second_scores[i] > self.first_scores[i])


def _answers(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[str], instruction: str,
             config: PoleTrainConfig) -> list[str]:
    from editing.batch_decode import decode_batch
    from editing.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, repetition_penalty=config.repetition_penalty)
    device = model.get_input_embeddings().weight.device
    encoded = [tokenizer.apply_chat_template([{"role": "system", "content": instruction}, {"role": "user", "content": p}],
                                             add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
               .to(device) for p in prompts]
    out: list[str] = []
    for i in range(0, len(encoded), config.gen_batch_size):
        out += [text.strip() for text in decode_batch(model, tokenizer, encoded[i:i + config.gen_batch_size], settings)]
    return out


def dimension_answers(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", dimension: str, scores: Scores,
                      *, prompts: Sequence[str] | None = None, config: PoleTrainConfig | None = None) -> DimensionAnswers:
    """Answer every prompt under both poles' instructions (greedy, batched) and score the answers on ``dimension``
    (``scores(text)[dimension]``, higher = toward the second pole)."""
    config = config or PoleTrainConfig()
    prompts = tuple(prompts if prompts is not None else TRAIN_PROMPTS[:config.n_prompts])
    if len(prompts) < 2:
        raise InvalidRequest(f"need at least 2 prompts to build preference pairs, got {len(prompts)}")
    first, second = pole_of(dimension, -1), pole_of(dimension, 1)
    a = _answers(model, tokenizer, prompts, first.instruction, config)
    b = _answers(model, tokenizer, prompts, second.instruction, config)
    return DimensionAnswers(dimension, prompts, tuple(a), tuple(b),
                            tuple(float(scores(t)[dimension]) for t in a), tuple(float(scores(t)[dimension]) for t in b))


def pairs_for(pole: Pole, answers: DimensionAnswers) -> list[PreferencePair]:
    """``pole``'s DPO pairs: its own instructed answer chosen, the opposite pole's rejected (kept prompts only)."""
    if pole.dimension != answers.dimension:
        raise InvalidRequest(f"pole {pole.key} is not on the answers' dimension {answers.dimension!r}")
    own, other = (answers.second, answers.first) if pole.sign > 0 else (answers.first, answers.second)
    pairs = [PreferencePair(answers.prompts[i], own[i], other[i]) for i in answers.kept]
    log.info("%s: %d of %d prompts give a pair in the instructed direction", pole.key, len(pairs), len(answers.prompts))
    return pairs
