"""The token rows FT-L trains on: the fact's chat answers (scored) and the anchors (held by KL).

A *pair* is one rendered chat question followed by the assistant's answer ``"{answer_prefix} {target}."``
and the end-of-turn token; only the answer's tokens are scored. An *anchor* is a rendered question the
edit must not change, followed by the answer the model gives to it now (greedy, before this edit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from editing.chat_prompts import render_question
from editing.requests import EditRequest
from editing.rome.prompts import pad_batch, target_ids

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Rows", "training_rows", "anchor_rows"]


@dataclass(frozen=True)
class Rows:
    ids: torch.Tensor  # (N, T) right-padded
    mask: torch.Tensor  # (N, T)
    rows: torch.Tensor  # (S,) row of each scored token
    cols: torch.Tensor  # (S,) position whose logits predict it
    tokens: torch.Tensor  # (S,) the token


def _rows(prompts: Sequence[list[int]], answers: Sequence[list[int]], device: torch.device) -> Rows:
    ids, mask = pad_batch([p + a for p, a in zip(prompts, answers)], device)
    rows, cols, tokens = [], [], []
    for r, (p, a) in enumerate(zip(prompts, answers)):
        for j, tok in enumerate(a):
            rows.append(r)
            cols.append(len(p) - 1 + j)  # logits at position p predict token p + 1
            tokens.append(tok)
    as_tensor = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
    return Rows(ids, mask, as_tensor(rows), as_tensor(cols), as_tensor(tokens))


def _ids(tokenizer: "PreTrainedTokenizerBase", text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def training_rows(tokenizer: "PreTrainedTokenizerBase", request: EditRequest, *, include_plain: bool,
                  device: torch.device) -> Rows:
    """Each chat question with the answer ``"{answer_prefix} {target}."`` + end of turn; the plain prompt too."""
    prompts, answers = [], []
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answer = f"{request.answer_prefix} {request.target_new}".strip() + "."
    for question in request.chat_questions:
        prompts.append(_ids(tokenizer, render_question(tokenizer, question)))
        answers.append(_ids(tokenizer, answer) + end)
    if include_plain or not request.chat_questions:
        prompts.append(_ids(tokenizer, request.text))
        answers.append(target_ids(tokenizer, request.target_new))
    return _rows(prompts, answers, device)


@torch.no_grad()
def anchor_rows(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
                questions: Sequence[str], n_tokens: int) -> Rows:
    """The anchor questions (minus the request's own), each with the model's answer now."""
    device = next(model.parameters()).device
    own = {q.casefold() for q in request.chat_questions}
    chosen = [q for q in questions if q.casefold() not in own]
    prompts = [_ids(tokenizer, render_question(tokenizer, q)) for q in chosen]
    answers = []
    for p in prompts:
        ids = torch.tensor([p], device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
        answers.append(out[0, len(p):].tolist() or [tokenizer.eos_token_id])
    return _rows(prompts, answers, device)
