"""Anchor examples: general questions answered by the base model itself, trained into every style adapter.

A style adapter learns from a user's own turns and the Q/A pairs of their facts ("Where do I live?" → "You live
in Oslo."). Trained on those alone, SmolLM2's adapter also pulled general answers toward that form: with ten
facts per user, the user's model (adapter + edits) kept 2 of 5 general questions right (``bench/closed_book.py``,
neutral %). Anchors are the fix the editing methods already use for locality (FT-L's KL anchors), in the form
adapter training takes: each anchor question with the *base* model's own greedy answer as the target
(self-distillation), so that the adapter's loss is lowest where it leaves general answers as they were.

The questions are not :data:`editing.chat_prompts.NEUTRAL_CHAT`: those measure locality and stay held out. The
targets are whatever the base model answers, right or wrong (SmolLM2-135M names Neptune as the largest planet):
an anchor keeps the base model's behaviour, it does not teach facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from editing.oppu.data import TrainExample

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ANCHOR_QUESTIONS", "anchor_examples"]

ANCHOR_QUESTIONS: tuple[str, ...] = (
    "What is the largest planet in our solar system?",
    "How many legs does a spider have?",
    "Who painted the Mona Lisa?",
    "What is the boiling point of water in Celsius?",
    "Tell me a fun fact about the ocean.",
    "How do I make a cup of tea?",
)


def anchor_examples(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                    questions: Sequence[str] = ANCHOR_QUESTIONS, *, max_new_tokens: int = 24) -> list[TrainExample]:
    """One example per question: the model's greedy chat answer as it is now (call it on the base model)."""
    from editing.checks import closed_book_answer

    out = []
    for q in questions:
        answer = closed_book_answer(model, tokenizer, q, max_new_tokens=max_new_tokens).strip()
        if answer:
            out.append(TrainExample((("user", q),), "assistant", answer, "anchor"))
    return out
