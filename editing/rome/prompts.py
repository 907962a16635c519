"""Prompts of an edit, tokenized, with the position of the subject's last token.

A context prefix is plain text put before the request's prompt ("" = the prompt alone); ROME averages
the key over a few such prefixes so the edit does not depend on the exact words before the subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import torch

from editing.errors import InvalidRequest
from editing.hooks import inference_mode_of
from editing.requests import EditRequest
from editing.sampling import sample_texts

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from editing.rome.hparams import ValueHyperParams

H = TypeVar("H", bound="ValueHyperParams")

__all__ = ["CONTEXT_STARTS", "Encoded", "context_prefixes", "prefixes_for", "with_fixed_prefixes", "encode_at_subject",
           "target_ids", "pad_batch", "request_encodings"]

# The words ROME starts its generated context prefixes from.
CONTEXT_STARTS = ("The", "Therefore", "Because", "I", "You")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # the prompt's token ids
    subject_last: int  # index in ``ids`` of the subject's last token


def context_prefixes(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                     lengths: Sequence[tuple[int, int]], *, seed: int = 0) -> list[str]:
    """``[""]`` plus, per ``(n_tokens, count)``, ``count`` short texts the model writes, each ending ". "."""
    prefixes = [""]
    for n_tokens, count in lengths:
        starts = [CONTEXT_STARTS[i % len(CONTEXT_STARTS)] for i in range(count)]
        texts = sample_texts(model, tokenizer, starts, n_tokens, seed=seed + n_tokens)
        prefixes += [" ".join(t.split()) + ". " for t in texts]
    return prefixes


def prefixes_for(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                 hparams: "ValueHyperParams") -> list[str]:
    """``hparams.context_prefixes`` when fixed, else freshly generated from ``context_template_lengths``."""
    if hparams.context_prefixes:
        return list(hparams.context_prefixes)
    return context_prefixes(model, tokenizer, hparams.context_template_lengths, seed=hparams.context_seed)


def with_fixed_prefixes(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", hparams: H) -> H:
    """``hparams`` with its context prefixes generated once, so later calls with it skip that step.

    The prefixes are the same for every edit on one model; generating them takes several forward passes.
    """
    with inference_mode_of(model):
        return replace(hparams, context_prefixes=tuple(prefixes_for(model, tokenizer, hparams)))


def encode_at_subject(tokenizer: "PreTrainedTokenizerBase", prefix: str, prompt: str, subject: str) -> Encoded:
    """Tokenize ``prefix + prompt.format(subject)`` and find the subject's last token by character offsets."""
    text = prefix + prompt.replace("{}", subject, 1)
    end = len(prefix) + prompt.index("{}") + len(subject)  # first character after the subject
    enc = tokenizer(text, return_offsets_mapping=True)
    inside = [i for i, (start, stop) in enumerate(enc["offset_mapping"]) if start < end and stop > start]
    if not inside:
        raise InvalidRequest(f"could not find the subject {subject!r} among the tokens of {text!r}")
    return Encoded(ids=list(enc["input_ids"]), subject_last=inside[-1])


def target_ids(tokenizer: "PreTrainedTokenizerBase", target: str) -> list[int]:
    """Token ids of ``target`` as it continues a prompt (with the leading space a continuation has)."""
    text = target if target.startswith(" ") else " " + target
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidRequest(f"target {target!r} tokenizes to nothing")
    return list(ids)


def pad_batch(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, both ``(len(rows), max_len)``.

    Right padding keeps every position index as it is in the unpadded row.
    """
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def request_encodings(tokenizer: "PreTrainedTokenizerBase", request: EditRequest,
                      prefixes: Sequence[str]) -> list[Encoded]:
    """The request's prompt after each prefix."""
    return [encode_at_subject(tokenizer, p, request.prompt, request.subject) for p in prefixes]
