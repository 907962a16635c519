"""The token rows FT-L trains on: the fact's chat answers (scored) and the anchors (held by KL).

A *pair* is one rendered chat question followed by the assistant's answer ``"{answer_prefix} {target}."``
and the end-of-turn token; only the answer's tokens are scored. An *anchor* is a rendered question the
edit must not change, followed by the answer the model gives to it now (greedy, before this edit).

Every rendered chat opens with the same tokens (the template's shared prefix, e.g. the default system
turn). Rows that open with them carry them once, as ``Rows.prefix``, and hold only what follows: FT-L
keeps its delta off the prefix's keys, so the prefix's states are computed once per edit and reused by
every step (about half of each row's tokens on SmolLM2).
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

__all__ = ["Rows", "chat_prefix_ids", "training_rows", "anchor_rows"]


@dataclass(frozen=True)
class Rows:
    ids: torch.Tensor  # (N, T) right-padded; what follows ``prefix`` when there is one
    mask: torch.Tensor  # (N, T)
    rows: torch.Tensor  # (S,) row of each scored token
    cols: torch.Tensor  # (S,) position in ``ids`` whose logits predict it
    tokens: torch.Tensor  # (S,) the token
    prefix: torch.Tensor | None = None  # (1, P): the ids every row continues, or None

    def full(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids, mask, cols)`` with the prefix written into every row (for a plain forward)."""
        if self.prefix is None:
            return self.ids, self.mask, self.cols
        n, p = self.ids.shape[0], self.prefix.shape[1]
        ids = torch.cat([self.prefix.expand(n, -1), self.ids], dim=1)
        mask = torch.cat([torch.ones(n, p, dtype=self.mask.dtype, device=self.mask.device), self.mask], dim=1)
        return ids, mask, self.cols + p


def _rows(prompts: Sequence[list[int]], answers: Sequence[list[int]], device: torch.device,
          prefix: Sequence[int] = ()) -> Rows:
    """Rows of ``prompt + answer`` (answer scored); ``prefix``, when given, is stripped off every prompt."""
    cut = len(prefix)
    ids, mask = pad_batch([p[cut:] + a for p, a in zip(prompts, answers)], device)
    rows, cols, tokens = [], [], []
    for r, (p, a) in enumerate(zip(prompts, answers)):
        for j, tok in enumerate(a):
            rows.append(r)
            cols.append(len(p) - cut - 1 + j)  # logits at position p predict token p + 1
            tokens.append(tok)
    as_tensor = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
    shared = torch.tensor([list(prefix)], device=device) if cut else None
    return Rows(ids, mask, as_tensor(rows), as_tensor(cols), as_tensor(tokens), shared)


def _ids(tokenizer: "PreTrainedTokenizerBase", text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_prefix_ids(tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    """The tokens every rendered question opens with (the template's shared prefix; may be empty)."""
    shell = render_question(tokenizer, "{}")
    return _ids(tokenizer, shell[: shell.index("{}")])


def _grouped(prompts: Sequence[list[int]], answers: Sequence[list[int]], prefix: Sequence[int],
             device: torch.device) -> list[Rows]:
    """One Rows of the pairs that open with ``prefix`` (prefix shared), one of the rest (each non-empty)."""
    cut = len(prefix)
    shared = [i for i, p in enumerate(prompts) if cut and len(p) > cut and p[:cut] == list(prefix)]
    rest = [i for i in range(len(prompts)) if i not in shared]
    groups = []
    if shared:
        groups.append(_rows([prompts[i] for i in shared], [answers[i] for i in shared], device, prefix))
    if rest:
        groups.append(_rows([prompts[i] for i in rest], [answers[i] for i in rest], device))
    return groups


def training_rows(tokenizer: "PreTrainedTokenizerBase", request: EditRequest, *, include_plain: bool,
                  device: torch.device, prefix: Sequence[int] = ()) -> list[Rows]:
    """Each chat question with the answer ``"{answer_prefix} {target}."`` + end of turn; the plain prompt too.

    Grouped by whether a row opens with ``prefix`` (see the module's doc)."""
    prompts, answers = [], []
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answer = f"{request.answer_prefix} {request.target_new}".strip() + "."
    for question in request.chat_questions:
        prompts.append(_ids(tokenizer, render_question(tokenizer, question)))
        answers.append(_ids(tokenizer, answer) + end)
    if include_plain or not request.chat_questions:
        prompts.append(_ids(tokenizer, request.text))
        answers.append(target_ids(tokenizer, request.target_new))
    return _grouped(prompts, answers, prefix, device)


@torch.no_grad()
def anchor_rows(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
                questions: Sequence[str], n_tokens: int, prefix: Sequence[int] = ()) -> list[Rows]:
    """The anchor questions (minus the request's own), each with the model's answer now; grouped by prefix."""
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
    return _grouped(prompts, answers, prefix, device)
