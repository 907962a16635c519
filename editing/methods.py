"""The knowledge-editing methods by name, all with one entry shape.

``METHODS[name].compute(model, tokenizer, requests, hparams, *, stats=None, preserve=None)`` returns one
:class:`~editing.requests.EditResult` per request and leaves the model exactly as it was given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from editing.errors import InvalidRequest
from editing.memit import MEMITHyperParams, compute_memit
from editing.requests import EditRequest, EditResult
from editing.rome import ROMEHyperParams, compute_rome
from editing.rome.hparams import ValueHyperParams
from editing.stats import SecondMoments

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["EditMethod", "Method", "METHODS", "get_method"]


class EditMethod(Protocol):
    def __call__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                 requests: Sequence[EditRequest], hparams: Any, *, stats: SecondMoments | None = None,
                 preserve: Mapping[str, torch.Tensor] | None = None) -> list[EditResult]: ...


@dataclass(frozen=True)
class Method:
    name: str
    compute: EditMethod
    hparams: type[ValueHyperParams]  # the dataclass of its hyper-parameters; its defaults suit SmolLM2


METHODS: Mapping[str, Method] = {
    "rome": Method("rome", compute_rome, ROMEHyperParams),
    "memit": Method("memit", compute_memit, MEMITHyperParams),
}


def get_method(name: str) -> Method:
    """The method called ``name``; InvalidRequest listing the known ones otherwise."""
    if name not in METHODS:
        raise InvalidRequest(f"unknown editing method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]
