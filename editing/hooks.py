"""Forward hooks that read or steer a model without touching its weights.

Every knowledge-editing method here works through hooks: it reads a module's input keys, adds an
optimized vector to a module's output, and applies deltas ``ΔW = B @ A`` as ``out += (x @ Aᵀ) @ Bᵀ``.
Nothing in this module assigns into a parameter, so a model is exactly the same after as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from editing.errors import InvalidRequest
from editing.requests import LowRankDelta

__all__ = ["find_module", "merge_per_module", "lora_term", "apply_deltas", "RowLora", "stack_row_deltas",
           "apply_row_deltas", "inference_mode_of", "capture", "add_at_positions"]


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a clear error when the model has none by that name."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise InvalidRequest(
            f"{type(model).__name__} has no module {name!r}; check the module templates in the hyper-parameters "
            "(e.g. 'model.layers.{}.mlp.down_proj' for llama/qwen, 'transformer.h.{}.mlp.c_proj' for gpt2) "
            "and that the layer index is below the model's number of layers"
        ) from None


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def inference_mode_of(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) for the duration; the caller's train/eval flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def merge_per_module(deltas: Sequence[LowRankDelta]) -> list[LowRankDelta]:
    """One delta per module, in first-seen order: several deltas on one module are concatenated along the rank.

    ``[B1 B2] @ [A1; A2] = B1 @ A1 + B2 @ A2``, so the merged delta is exactly their sum.
    """
    groups: dict[str, list[LowRankDelta]] = {}
    for delta in deltas:
        groups.setdefault(delta.module, []).append(delta)
    merged = []
    for module, group in groups.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        if len({(d.A.shape[1], d.B.shape[0]) for d in group}) != 1:
            raise InvalidRequest(f"deltas on {module} disagree on the module's shape: "
                                 f"{sorted({(d.B.shape[0], d.A.shape[1]) for d in group})} (out, in)")
        a = torch.cat([d.A for d in group], dim=0)  # (sum r, in)
        b = torch.cat([d.B.to(a.dtype) for d in group], dim=1)  # (out, sum r)
        merged.append(LowRankDelta(module, a, b))
    return merged


def lora_term(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``ΔW x`` for ``ΔW = B @ A`` without forming ``ΔW``: ``(x @ Aᵀ) @ Bᵀ``, shape ``(..., out)``."""
    return (x @ a.T) @ b.T


@contextmanager
def apply_deltas(model: nn.Module, deltas: Sequence[LowRankDelta]) -> Iterator[None]:
    """Run ``model`` as if each delta were added to its module's weight: ``out += (x @ Aᵀ) @ Bᵀ``.

    The orientation of :class:`LowRankDelta` is ``(out, in)`` for every module type, so the same hook
    serves ``nn.Linear`` and GPT-2's transposed ``Conv1D``.
    """

    def hook_for(delta: LowRankDelta):  # noqa: ANN202 - a torch hook
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            x = args[0]  # (..., in)
            a, b = delta.A.to(x.device, x.dtype), delta.B.to(x.device, x.dtype)
            return _replace_first(output, _first(output) + lora_term(x, a, b))  # (..., out)

        return hook

    with ExitStack() as stack:
        for delta in deltas:
            handle = find_module(model, delta.module).register_forward_hook(hook_for(delta))
            stack.callback(handle.remove)
        yield


@dataclass(frozen=True)
class RowLora:
    """Every row of a batch with its own low-rank term on one module: row ``b`` adds ``(x_b @ A_bᵀ) @ B_bᵀ``.

    Ranks are zero-padded to the largest in the batch; a row without a delta on the module has all-zero
    ``A_b``/``B_b``, so its term is exactly zero.
    """

    A: torch.Tensor  # (batch, r_max, in)
    B: torch.Tensor  # (batch, out, r_max)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (batch, T, in) → the per-row terms (batch, T, out)."""
        return torch.bmm(torch.bmm(x, self.A.transpose(1, 2)), self.B.transpose(1, 2))

    def select(self, rows: torch.Tensor) -> "RowLora":
        """The same terms for the batch rows ``rows`` (1-D index tensor), in that order."""
        return RowLora(self.A[rows], self.B[rows])


def stack_row_deltas(rows: Sequence[Sequence[LowRankDelta]], *, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> dict[str, RowLora]:
    """Module name → :class:`RowLora` for a batch whose row ``b`` runs with the deltas ``rows[b]``.

    Each row's deltas are first merged per module (:func:`merge_per_module`); all rows must agree on a
    module's shape.
    """
    merged = [{d.module: d for d in merge_per_module(row)} for row in rows]
    modules = list(dict.fromkeys(name for row in merged for name in row))
    stacks: dict[str, RowLora] = {}
    for name in modules:
        present = [row[name] for row in merged if name in row]
        shapes = {(d.B.shape[0], d.A.shape[1]) for d in present}
        if len(shapes) != 1:
            raise InvalidRequest(f"the batch's deltas on {name} disagree on the module's shape: {sorted(shapes)} "
                                 "(out, in); every row must be made for the same base model")
        (n_out, n_in), rank = shapes.pop(), max(d.A.shape[0] for d in present)
        dtype_ = dtype or present[0].A.dtype
        a = torch.zeros((len(rows), rank, n_in), device=device, dtype=dtype_)  # (batch, r_max, in)
        b = torch.zeros((len(rows), n_out, rank), device=device, dtype=dtype_)  # (batch, out, r_max)
        for i, row in enumerate(merged):
            if name in row:
                r = row[name].A.shape[0]
                a[i, :r] = row[name].A.to(a.device, a.dtype)
                b[i, :, :r] = row[name].B.to(b.device, b.dtype)
        stacks[name] = RowLora(a, b)
    return stacks


@contextmanager
def apply_row_deltas(model: nn.Module, stacks: Mapping[str, RowLora]) -> Iterator[None]:
    """Run a batch through ``model`` with each row's own deltas: ``out_b += (x_b @ A_bᵀ) @ B_bᵀ`` per module.

    ``stacks`` comes from :func:`stack_row_deltas` for exactly the batch that is run.
    """

    def hook_for(lora: RowLora):  # noqa: ANN202 - a torch hook
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            x = args[0]  # (batch, T, in)
            term = RowLora(lora.A.to(x.device, x.dtype), lora.B.to(x.device, x.dtype))(x)
            return _replace_first(output, _first(output) + term)  # (batch, T, out)

        return hook

    with ExitStack() as stack:
        for name, lora in stacks.items():
            handle = find_module(model, name).register_forward_hook(hook_for(lora))
            stack.callback(handle.remove)
        yield


@contextmanager
def capture(model: nn.Module, name: str, *, what: str = "input") -> Iterator[list[torch.Tensor]]:
    """Collect the ``input`` (first positional argument) or ``output`` of module ``name`` on each forward."""
    if what not in ("input", "output"):
        raise ValueError(f"what must be 'input' or 'output', got {what!r}")
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        seen.append((args[0] if what == "input" else _first(output)).detach())

    handle = find_module(model, name).register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def add_at_positions(model: nn.Module, name: str, vector: torch.Tensor, positions: Sequence[int],
                     *, rows: Sequence[int] | None = None) -> Iterator[None]:
    """Add ``vector`` ``(d,)`` to module ``name``'s output at ``(row, positions[row])`` for the given rows.

    The addition is out of place and differentiable in ``vector`` — the way compute_v optimizes it.
    """
    rows = list(range(len(positions))) if rows is None else list(rows)
    cols = [positions[r] for r in rows]

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        out = _first(output)  # (batch, T, d)
        add = torch.zeros_like(out)
        add[rows, cols] = vector.to(out.dtype)
        return _replace_first(output, out + add)

    handle = find_module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
