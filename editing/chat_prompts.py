"""Chat-form prompts for knowledge edits: a question rendered with the model's chat template.

A user's model is asked in chat ("Where do I live?"), not with ROME's plain prompts, so the edits and
their checks render every question the way serving does: the tokenizer's chat template with one user
turn and the generation prompt, no system turn of our own (the template may add its default one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from editing.errors import InvalidRequest
from editing.requests import EditRequest

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

__all__ = ["NEUTRAL_CHAT", "NEUTRAL_ANSWERS", "render_question", "chat_form_requests"]

# General factual questions whose answers an edit about one user must not change. Open-ended requests
# ("Give me a tip for sleeping better.") are left out: SmolLM2's greedy wording of those drifts under any
# small change of the weights, even when the content stays the same.
NEUTRAL_CHAT: tuple[str, ...] = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What is the capital of Japan?",
    "Who wrote Romeo and Juliet?",
    "What is the chemical symbol for water?",
)
# What a correct answer to each neutral question contains (any of them; SmolLM2's base answers do). An edit
# keeps a neutral question when its answer still does — rewording is allowed, losing the fact is not.
NEUTRAL_ANSWERS: dict[str, tuple[str, ...]] = {
    "What is the capital of France?": ("Paris",),
    "How many days are there in a week?": ("seven", "7"),
    "What is the capital of Japan?": ("Tokyo",),
    "Who wrote Romeo and Juliet?": ("Shakespeare",),
    "What is the chemical symbol for water?": ("H2O",),
}


def render_question(tokenizer: "PreTrainedTokenizerBase", question: str) -> str:
    """The chat-template text of one user turn plus the assistant's generation prompt."""
    if not isinstance(question, str) or not question.strip():
        raise InvalidRequest(f"question must be a non-empty string, got {question!r}")
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def chat_form_requests(tokenizer: "PreTrainedTokenizerBase", request: EditRequest) -> list[EditRequest]:
    """One ROME-shaped request per chat question: the subject is the question inside the rendered chat.

    The prompt is the rendered turn with the question replaced by ``{}``, followed by the answer prefix;
    the key is then read at the question's last token and the value written for the answer position.
    """
    if not request.chat_questions:
        raise InvalidRequest(f"request {request.key or request.text!r} has no chat_questions to edit in chat form")
    shell = render_question(tokenizer, "{}")
    if shell.count("{}") != 1 or shell.count("{") != 1:
        raise InvalidRequest("the chat template itself contains braces; chat-form requests cannot be built")
    prompt = shell + request.answer_prefix
    return [EditRequest(prompt=prompt, subject=q, target_new=request.target_new, key=request.key)
            for q in request.chat_questions]
