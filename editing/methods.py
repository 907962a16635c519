"""The knowledge-editing methods by name, all with one entry shape.

``METHODS[name].compute(model, tokenizer, requests, hparams, *, stats=None, preserve=None)`` returns one
:class:`~editing.requests.EditResult` per request and leaves the model exactly as it was given.

:data:`DEFAULT_METHOD` is the method a user's facts are written with: FT-L, trained on the rendered chat
questions and answers, made SmolLM2 answer the user's chat questions closed-book (trained and held-out
phrasings); a ROME edit of the plain prompt does not reach the chat form (NOTES.md; ``bench/closed_book.py``
compares the methods on the same synthetic users).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from editing.errors import InvalidRequest
from editing.ft_l import FTLHyperParams, compute_ft_l
from editing.memit import MEMITHyperParams, compute_memit
from editing.requests import EditRequest, EditResult
from editing.rome import ROMEHyperParams, compute_rome
from editing.rome.hparams import ValueHyperParams
from editing.stats import SecondMoments

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DEFAULT_METHOD", "EditMethod", "Method", "METHODS", "default_hparams", "get_method"]


class EditMethod(Protocol):
    def __call__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                 requests: Sequence[EditRequest], hparams: Any, *, stats: SecondMoments | None = None,
                 preserve: Mapping[str, torch.Tensor] | None = None) -> list[EditResult]: ...


@dataclass(frozen=True)
class Method:
    name: str
    compute: EditMethod
    hparams: type[ValueHyperParams] | type[FTLHyperParams]  # its hyper-parameters; the defaults suit SmolLM2


METHODS: Mapping[str, Method] = {
    "rome": Method("rome", compute_rome, ROMEHyperParams),
    "memit": Method("memit", compute_memit, MEMITHyperParams),
    "ft_l": Method("ft_l", compute_ft_l, FTLHyperParams),
}

DEFAULT_METHOD: str = "ft_l"


def get_method(name: str) -> Method:
    """The method called ``name``; InvalidRequest listing the known ones otherwise."""
    if name not in METHODS:
        raise InvalidRequest(f"unknown editing method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def default_hparams() -> Any:
    """The hyper-parameters of :data:`DEFAULT_METHOD` (its SmolLM2 defaults)."""
    return get_method(DEFAULT_METHOD).hparams()
