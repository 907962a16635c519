"""Does an edit work where the user will notice it? Greedy closed-book answers with and without it.

``efficacy``: the plain prompt (and its paraphrases) continue with the target; ``chat_efficacy``: the
answers to the request's chat questions contain it; ``locality``: neutral chat questions are still answered
right with the deltas — the answer contains what a correct one contains (:data:`NEUTRAL_ANSWERS`; for a
question without a known answer, what the answer without the deltas contained: it must be word for word the
same) and not the edit's target. ``verbatim``: the share of neutral answers word for word unchanged, reported
beside it (SmolLM2 rewords greedy answers under any small weight change; a reworded right answer is kept).
Matching is a case-insensitive substring test on the decoded answer. Answers are decoded by pllm's own
decoder (:func:`editing.generation.decode_stream`), which takes the deltas per call (no hooks around it) and
gives the same tokens as ``transformers``' greedy ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from editing.chat_prompts import NEUTRAL_ANSWERS, NEUTRAL_CHAT, render_question
from editing.errors import InvalidRequest
from editing.hooks import inference_mode_of
from editing.requests import EditRequest, LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["MIN_CHAT_EFFICACY", "MIN_LOCALITY", "NEUTRAL_CHAT", "EditCheck", "check_edit", "closed_book_answer",
           "contains_target"]

MIN_CHAT_EFFICACY = 0.5  # at least half the chat questions answered with the new value
MIN_LOCALITY = 0.8  # at least 80 % of neutral chat questions still answered right


@dataclass(frozen=True)
class EditCheck:
    efficacy: float  # share of plain prompts (prompt + paraphrases) whose continuation contains the target
    chat_efficacy: float  # share of chat questions whose answer contains the target
    locality: float  # share of neutral chat questions still answered right (and without the target)
    passed: bool  # chat_efficacy >= MIN_CHAT_EFFICACY and locality >= MIN_LOCALITY
    verbatim: float = 1.0  # share of neutral answers word for word as without the deltas (reported only)
    neutral_before: tuple[str, ...] = ()  # the neutral answers without the deltas (prior only)
    neutral_after: tuple[str, ...] = ()  # ... and with them: a later edit's "before" when it is kept


def contains_target(answer: str, target: str) -> bool:
    """Case-insensitive substring match of ``target`` in ``answer``."""
    return target.strip().casefold() in answer.casefold()


def _greedy(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", text: str, max_new_tokens: int,
            deltas: Sequence[LowRankDelta] = ()) -> str:
    from editing.generation import GenerationSettings, decode_stream

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    with inference_mode_of(model):
        return "".join(decode_stream(model, tokenizer, ids, GenerationSettings(max_new_tokens=max_new_tokens),
                                     list(deltas)))


def closed_book_answer(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", question: str,
                       deltas: Sequence[LowRankDelta] = (), max_new_tokens: int = 24) -> str:
    """The model's greedy chat answer to ``question`` (no system prompt of ours), with ``deltas`` applied."""
    if max_new_tokens < 1:
        raise InvalidRequest(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return _greedy(model, tokenizer, render_question(tokenizer, question), max_new_tokens, deltas)


def check_edit(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
               deltas: Sequence[LowRankDelta], *, prior: Sequence[LowRankDelta] = (),
               neutral_prompts: Sequence[str] = NEUTRAL_CHAT, max_new_tokens: int = 16,
               neutral_before: Sequence[str] | None = None) -> EditCheck:
    """Efficacy, chat efficacy and locality of ``deltas`` for ``request`` (see the module docstring).

    ``prior``: the deltas already in the user's model (earlier edits); "without the deltas" means with
    ``prior`` alone, "with" means ``prior`` and ``deltas``. Pass them here rather than applying them as
    hooks around the call: the decoder then keeps its fast step. ``neutral_before``: the neutral answers
    with ``prior`` alone when the caller has them (an earlier check's ``neutral_after``), one per prompt.
    Plain prompts are continued only a few tokens past the target's length: the target comes first or not at all.
    """
    if not request.chat_questions:
        raise InvalidRequest(f"request {request.text!r} has no chat_questions; check_edit measures chat answers")
    if not neutral_prompts:
        raise InvalidRequest("neutral_prompts is empty; pass at least one question the edit must not change")
    if neutral_before is not None and len(neutral_before) != len(neutral_prompts):
        raise InvalidRequest(f"neutral_before has {len(neutral_before)} answers for {len(neutral_prompts)} prompts")
    prior, both = list(prior), [*prior, *deltas]
    plain_tokens = min(max_new_tokens, len(tokenizer(" " + request.target_new.strip())["input_ids"]) + 4)
    plain = [_greedy(model, tokenizer, p, plain_tokens, both) for p in (request.text, *request.paraphrases)]
    efficacy = sum(contains_target(a, request.target_new) for a in plain) / len(plain)
    chat = [closed_book_answer(model, tokenizer, q, both, max_new_tokens) for q in request.chat_questions]
    chat_efficacy = sum(contains_target(a, request.target_new) for a in chat) / len(chat)
    kept, same, befores, afters = [], [], [], []
    for i, q in enumerate(neutral_prompts):
        before = (neutral_before[i] if neutral_before is not None
                  else closed_book_answer(model, tokenizer, q, prior, max_new_tokens))
        after = closed_book_answer(model, tokenizer, q, both, max_new_tokens)
        befores.append(before)
        afters.append(after)
        same.append(after == before)
        right = NEUTRAL_ANSWERS.get(q)
        ok = any(contains_target(after, r) for r in right) if right else after == before
        kept.append(ok and not contains_target(after, request.target_new))
    locality = sum(kept) / len(kept)
    return EditCheck(efficacy, chat_efficacy, locality,
                     chat_efficacy >= MIN_CHAT_EFFICACY and locality >= MIN_LOCALITY, sum(same) / len(same),
                     tuple(befores), tuple(afters))
