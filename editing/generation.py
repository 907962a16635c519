"""Token-by-token decoding with a KV cache, shared by ``LocalModel.generate`` and ``LocalModel.stream``.

Our own loop rather than ``model.generate``: it yields text as it is produced (no streamer thread) and
computes only the last position's logits in prefill. For a 135M model on CPU, per-step *Python*
overhead (module calls, decorators, mask building, cache bookkeeping) costs as much as the matmuls, so
the loop has two step implementations behind one interface:

* :class:`_LlamaStep` — the fast path. One decode step of a plain Llama-architecture model written as
  straight tensor ops over the model's *own* weight tensors (no copies: in-place weight edits are
  seen at once; bf16 on a CPU uses copies packed for oneDNN, rebuilt when a weight changes — see
  :mod:`editing.packed`) into a preallocated KV buffer. It repeats transformers' operations in the same order,
  so its logits are bit-identical to the model's forward (the parity test checks greedy tokens against
  ``model.generate``). It applies only when that is guaranteed: see :meth:`_LlamaStep.unsupported_reason`.
* :class:`_ModelStep` — the general path: ``model(...)`` with a ``DynamicCache``. Used for everything
  else (PEFT-wrapped models, extra ``model_kwargs`` such as ``adapter_names``, hooks, other
  architectures), so nothing is ever silently skipped.

A user's low-rank deltas (``deltas=`` of :meth:`Decoder.stream`, ``ΔW = B @ A`` per module) are applied in
both: the prefill and :class:`_ModelStep` run the model under :func:`editing.hooks.apply_deltas`;
:class:`_LlamaStep` adds ``(x @ Aᵀ) @ Bᵀ`` to the output of each q/k/v/o/gate/up/down projection that
carries one (deltas on one module concatenated along the rank first). Deltas on any other module (e.g.
``lm_head``) send the request to the general path, with the reason logged.

What was tried and what each gave is tabled at the top of ``bench/generate.py``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from editing.errors import InvalidRequest
from editing.hooks import RowLora, apply_deltas, apply_row_deltas, lora_term, merge_per_module, stack_row_deltas
from editing.packed import PackedLinears, packed_linears
from editing.requests import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from editing.prefix_cache import PrefixCache

__all__ = ["GenerationSettings", "Decoder", "decode_stream", "eos_token_ids"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """Greedy and sampling settings in one place. ``temperature == 0`` means greedy.

    ``ignore_eos`` keeps generating past end-of-reply tokens (benchmarks that need exactly
    ``max_new_tokens``); stop strings still apply.

    ``penalize_prompt``: whether the repetition penalty also counts the prompt's tokens (transformers'
    ``generate`` does). Off by default: with memory notes in the prompt, penalizing them pushed SmolLM2 away
    from the very names it should repeat ("Nala" came out as "Nalani"); the reply's own tokens are still
    penalized, which is what stops loops (``bench/memory_qa.py``).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    penalize_prompt: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            raise InvalidRequest(f"stop must be a sequence of strings, got the single string {self.stop!r}; "
                                 f"wrap it: stop=({self.stop!r},)")
        object.__setattr__(self, "stop", tuple(self.stop))
        problems = [
            (self.max_new_tokens < 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature < 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (not 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k < 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (self.repetition_penalty <= 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (not all(isinstance(s, str) and s for s in self.stop),
             f"stop strings must be non-empty str, got {self.stop!r}"),
        ]
        for bad, message in problems:
            if bad:
                raise InvalidRequest(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def eos_token_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> set[int]:
    """Every id that ends a reply: the tokenizer's EOS, the generation config's, and ``<|im_end|>``."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids


def _processors(settings: GenerationSettings) -> Any:
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if not settings.greedy:
        procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            procs.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(settings.top_p))
    return procs


# ---------------------------------------------------------------------------------------------- text


class _TextStream:
    """Incremental detokenization plus stop strings.

    Decoding all generated ids every step costs O(n) per token; instead only a short window is decoded:
    the text of ``ids[prefix:]`` minus the text of ``ids[prefix:read]`` is the new tail (byte-level BPE
    decodes concatenatively). A tail ending in U+FFFD is an incomplete UTF-8 character and waits for the
    next token. Text that could be the start of a stop string is held back until it is known not to be.

    Invariant: the concatenation of everything :meth:`push` and :meth:`finish` return equals
    ``tokenizer.decode(all_ids, skip_special_tokens=True)`` cut before the first stop string.
    """

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] is the context window decoded again for the next tail
        self.read = 0
        self.text = ""  # all committed text
        self.emitted = 0  # len of text already handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is safe to show now ("" once a stop string was seen)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return self._commit(after[len(before):])

    def finish(self) -> str:
        """Flush what is held back (an incomplete character or a partial stop string) at the end."""
        if self.stopped:
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        tail = after[len(before):] if len(after) > len(before) else ""
        out = self._commit(tail)
        if self.stopped:
            return out
        out += self.text[self.emitted:]
        self.emitted = len(self.text)
        return out

    def _commit(self, delta: str) -> str:
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out, self.emitted, self.stopped = self.text[self.emitted:cut], cut, True
            return out
        safe = len(self.text) - self._held_back()
        out = self.text[self.emitted:safe]
        self.emitted = max(self.emitted, safe)
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best


# ---------------------------------------------------------------------------------------------- steps


class _ModelStep:
    """General decode step: the model's own forward with a ``DynamicCache`` (any causal LM, PEFT too).

    One row, or a left-padded batch: ``pads`` (batch, 1) is each row's count of padding columns, so row
    ``b``'s position at cache column ``c`` is ``c - pads[b]`` and its columns ``< pads[b]`` are masked.
    ``row_loras`` (from :func:`editing.hooks.stack_row_deltas`) gives each row its own deltas.
    """

    name = "model"

    def __init__(self, model: "PreTrainedModel", cache: Any, model_kwargs: dict[str, Any],
                 deltas: Sequence[LowRankDelta] = (), *, pads: torch.Tensor | None = None,
                 row_loras: dict[str, RowLora] | None = None) -> None:
        self.model = model
        self.cache = cache
        self.model_kwargs = model_kwargs
        self.deltas = deltas
        self.pads = pads
        self.row_loras = row_loras
        self.rows = 1 if pads is None else pads.shape[0]

    def _hooks(self) -> Any:
        return apply_row_deltas(self.model, self.row_loras) if self.row_loras else apply_deltas(self.model, self.deltas)

    def __call__(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """``token`` (batch, 1) at cache column ``position`` → next-token logits (batch, V)."""
        kwargs = dict(self.model_kwargs)
        if self.pads is not None:
            columns = torch.arange(position + 1, device=token.device)
            kwargs["attention_mask"] = (columns >= self.pads).long()  # (batch, position + 1)
            kwargs["position_ids"] = position - self.pads  # (batch, 1)
        with self._hooks():  # hooks only for the duration of this forward
            out = self.model(input_ids=token, cache=self.cache, use_cache=True, **kwargs)
        return out.logits[:, -1, :]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (the others finished)."""
        self.cache.batch_select_indices(rows)
        self.pads = None if self.pads is None else self.pads[rows]
        self.row_loras = None if not self.row_loras else {k: v.select(rows) for k, v in self.row_loras.items()}
        # Per-row model kwargs (a list with one entry per row, e.g. PEFT's adapter_names) follow their rows.
        self.model_kwargs = {k: [v[int(i)] for i in rows] if isinstance(v, list) and len(v) == self.rows else v
                             for k, v in self.model_kwargs.items()}
        self.rows = len(rows)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm`` op for op (fp32 statistics, result cast back) so the logits stay bit-identical."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


_Term = Callable[[torch.Tensor], torch.Tensor]  # x (batch, 1, in) → a low-rank term (batch, 1, out)


def _linear(x: torch.Tensor, module: Any, lora: _Term | None, packed: PackedLinears | None = None) -> torch.Tensor:
    """``module(x)`` as tensor ops (from its pre-packed bf16 weight when there is one), plus the user's low-rank
    term ``lora(x)`` when there is one."""
    out = F.linear(x, module.weight, module.bias) if packed is None else packed.linear(x, module)
    return out if lora is None else out + lora(x)


def _linears(x: torch.Tensor, modules: Sequence[Any], loras: Sequence[_Term | None],
             packed: PackedLinears | None) -> list[torch.Tensor]:
    """:func:`_linear` of several modules on one input: one product for a packed group (``packed.linears``)."""
    if packed is None:
        return [_linear(x, m, lora) for m, lora in zip(modules, loras)]
    return [out if lora is None else out + lora(x) for out, lora in zip(packed.linears(x, modules), loras)]


_SLOTS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
          "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


@dataclass(frozen=True)
class _LayerRefs:
    """References (not copies) to one decoder layer's tensors and modules, and its low-rank terms by slot."""

    norm1: Any
    q: Any
    k: Any
    v: Any
    o: Any
    norm2: Any
    gate: Any
    up: Any
    down: Any
    act: Any
    scaling: float


_COMPACT_MIN_COLUMNS = 16  # fewer masked leading columns than this are left alone (dropping them rebuilds the mask)
_SPARE_COLUMNS = 128  # columns a continuous batch's KV buffers are made with beyond the ones needed (see join)
_SPARE_LEFT = 32  # and before them, for joining prompts longer than the rows decoding


class _LlamaStep:
    """Fast decode step for a plain ``LlamaForCausalLM`` (SDPA attention, plain ``nn.Linear`` layers).

    Holds a KV buffer ``(layers, batch, kv_heads, capacity, head_dim)`` filled from the prefill cache; each
    step writes one column and attends over ``[:column + 1]`` — no reallocation. One row needs no mask; a
    left-padded batch (``pads`` (batch, 1): padding columns per row) masks each row's padding and gives
    row ``b`` the position ``column - pads[b]``. Low-rank terms: ``deltas`` for every row alike, or
    ``row_deltas`` (one list per row) as zero-padded per-row stacks applied with ``bmm``.
    """

    name = "llama-fast"

    @staticmethod
    def unsupported_reason(model: Any, model_kwargs: dict[str, Any]) -> str | None:
        """Why the fast step cannot reproduce ``model``'s forward exactly (``None`` = it can)."""
        from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaRMSNorm

        if model_kwargs:
            return f"extra model kwargs {sorted(model_kwargs)}"
        if not isinstance(model, LlamaForCausalLM):
            return f"{type(model).__name__} is not a plain LlamaForCausalLM"
        if model.training:
            return "model is in training mode"
        if getattr(model.config, "_attn_implementation", None) != "sdpa":
            return f"attention implementation {model.config._attn_implementation!r} (fast step mirrors sdpa)"
        for name, module in model.named_modules():
            if module._forward_hooks or module._forward_pre_hooks:
                return f"module {name!r} has hooks"
            is_leaf = not any(True for _ in module.children())
            if is_leaf and type(module) not in (torch.nn.Linear, torch.nn.Embedding, LlamaRMSNorm) \
                    and "rotary" not in name and "act_fn" not in name:
                return f"module {name!r} is a {type(module).__name__}"
        return None

    @staticmethod
    def slots(model: Any) -> dict[str, tuple[int, str]]:
        """Module name → (layer index, slot) for every projection the fast step computes itself."""
        return {f"model.layers.{i}.{path}": (i, slot)
                for i in range(model.config.num_hidden_layers) for slot, path in _SLOTS.items()}

    @classmethod
    def delta_reason(cls, model: Any, deltas: Sequence[LowRankDelta]) -> str | None:
        """Why the fast step cannot apply ``deltas`` (``None`` = it can)."""
        known = cls.slots(model)
        other = sorted({d.module for d in deltas if d.module not in known})
        return f"deltas on modules the fast step does not compute: {other}" if other else None

    def __init__(self, model: Any, cache: Any, capacity: int, deltas: Sequence[LowRankDelta] = (), *,
                 pads: torch.Tensor | None = None, row_deltas: Sequence[Sequence[LowRankDelta]] | None = None) -> None:
        cfg = model.config
        inner = model.model
        self.embed = inner.embed_tokens.weight  # (V, H)
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm
        self.lm_head = model.lm_head
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.layers = [
            _LayerRefs(layer.input_layernorm, layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.self_attn.o_proj, layer.post_attention_layernorm, layer.mlp.gate_proj, layer.mlp.up_proj,
                       layer.mlp.down_proj, layer.mlp.act_fn, layer.self_attn.scaling)
            for layer in inner.layers[: cfg.num_hidden_layers]
        ]
        self.lora = self._terms(model, deltas, row_deltas)  # per layer: slot ("q", ..., "down") → term
        # bf16 on a CPU: every projection and the LM head from weights packed once (editing/packed.py); else None.
        self.packed = packed_linears(model, [getattr(ly, slot) for ly in self.layers for slot in _SLOTS]
                                     + [self.lm_head], [g for ly in self.layers for g in ((ly.q, ly.k, ly.v),
                                                                                          (ly.gate, ly.up))])
        self._model = model
        self._rows = None if row_deltas is None else [tuple(r) for r in row_deltas]  # kept for join()
        first = cache.layers[0].keys  # (batch, kv_heads, T, head_dim)
        batch, prompt_len, self.head_dim = first.shape[0], first.shape[2], first.shape[-1]
        shape = (len(self.layers), batch, self.kv_heads, capacity, self.head_dim)
        # The buffers; ``keys``/``values`` are views of their first ``_batch`` rows from column ``_start`` on
        # (see _view): rows leave and join, and leading columns are dropped, without copying the rows that stay.
        self._kbuf = torch.empty(shape, dtype=first.dtype, device=first.device)
        self._vbuf = torch.empty(shape, dtype=first.dtype, device=first.device)
        self._batch, self._start = batch, 0
        self._filled = prompt_len  # columns (from _start) that hold keys and values
        self._view()
        for i, layer_cache in enumerate(cache.layers[: len(self.layers)]):
            self.keys[i, :, :, :prompt_len] = layer_cache.keys
            self.values[i, :, :, :prompt_len] = layer_cache.values
        self.pads = torch.zeros((batch, 1), dtype=torch.long, device=first.device) if pads is None else pads
        # (batch, 1, 1, capacity): True where a row may attend; None when no row is padded (one row: no mask).
        columns = torch.arange(capacity, device=first.device)
        self.visible = None if pads is None or not bool(pads.any()) else (columns >= self.pads)[:, None, None, :]

    def _terms(self, model: Any, deltas: Sequence[LowRankDelta],
               row_deltas: Sequence[Sequence[LowRankDelta]] | None) -> list[dict[str, _Term]]:
        weight = model.model.embed_tokens.weight
        slots = self.slots(model)
        terms: list[dict[str, _Term]] = [{} for _ in self.layers]
        if row_deltas is not None:
            for name, stack in stack_row_deltas(row_deltas, device=weight.device, dtype=weight.dtype).items():
                i, slot = slots[name]
                terms[i][slot] = stack
            return terms
        for delta in merge_per_module(deltas):
            i, slot = slots[delta.module]
            a, b = delta.A.to(weight.device, weight.dtype), delta.B.to(weight.device, weight.dtype)
            terms[i][slot] = functools.partial(lora_term, a=a, b=b)
        return terms

    def _view(self) -> None:
        self.keys = self._kbuf[:, : self._batch, :, self._start:]
        self.values = self._vbuf[:, : self._batch, :, self._start:]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (the others finished): later steps compute only those.

        Rows given in increasing order (as a decode loop drops the rows that ended) stay in the buffers: each
        kept row after a dropped one moves up by one copy of its own columns, and the rows before the first
        dropped one are not touched. Any other order gathers the kept rows into new buffers."""
        kept = [int(r) for r in rows.tolist()]
        if all(a < b for a, b in zip(kept, kept[1:])):
            live = slice(self._start, self._start + self._filled)
            for n, j in enumerate(kept):
                if j != n:  # n < j: row n is a dropped row, or one already moved up
                    self._kbuf[:, n, :, live] = self._kbuf[:, j, :, live]
                    self._vbuf[:, n, :, live] = self._vbuf[:, j, :, live]
            self._batch = len(kept)
        else:
            self._kbuf, self._vbuf = self.keys[:, rows], self.values[:, rows]
            self._batch, self._start = len(kept), 0
        self._view()
        self.pads = self.pads[rows]
        self.visible = None if self.visible is None else self.visible[rows]
        self.lora = [{slot: term.select(rows) if isinstance(term, RowLora) else term for slot, term in layer.items()}
                     for layer in self.lora]
        if self._rows is not None:
            self._rows = [self._rows[i] for i in rows.tolist()]

    # Continuous batching (rows that join a running batch; ``BatchDecoder.run(admit=...)``) -----------------

    def _mask(self) -> None:
        columns = torch.arange(self.keys.shape[3], device=self.pads.device)
        self.visible = (columns >= self.pads)[:, None, None, :] if bool(self.pads.any()) else None

    def compact(self, column: int) -> int:
        """Drop the leading cache columns that every row masks (all columns before ``column``, the next one
        to write, once no row is left); how many went (0 below a threshold).

        Under continuous batching the cache column only moves right, and the rows still decoding may all have
        started far to the right of column 0 (the rows that held the left part have left). Every step attends
        over ``[:column + 1]`` for every row, so those columns cost time each step and memory for good. The
        caller moves its cache column left by the returned count; positions (``column - pads``) are unchanged.
        """
        drop = min(column, int(self.pads.min())) if self._batch else column
        if drop < _COMPACT_MIN_COLUMNS:
            return 0
        self._start += drop  # nothing is copied: the views start further right in the buffers
        self._filled = max(0, self._filled - drop)
        self._view()
        self.pads = self.pads - drop
        self._mask()
        return drop

    def join(self, cache: Any, column: int, pads: torch.Tensor, rows: Sequence[Sequence[LowRankDelta]],
             room: int) -> int:
        """Add the rows of a prefill ``cache`` (left-padded by ``pads``, ``T`` columns), with ``rows`` their
        deltas, so that their prompts end right before cache column ``column``, with ``room`` columns free
        from there; the cache column to write next, which is ``column`` unless a joining prompt is longer
        (``T > column``: then every present row moves right by ``T - column`` masked columns; positions are
        ``column - pads``, so no row's positions change). Needs a step made with ``row_deltas``.

        When the buffers have a free row for each joining one and room on both sides, the joining rows are
        written into them and the present rows stay where they are (a longer prompt moves the views' first column
        left instead of the rows right). Otherwise the buffers are made anew, with :data:`_SPARE_COLUMNS` more
        columns than needed on the right and :data:`_SPARE_LEFT` on the left (and at least as many rows as
        before), so that the joins after it find room."""
        if self._rows is None:
            raise InvalidRequest("only a batch step (made with row_deltas) can take joining rows")
        first = cache.layers[0].keys  # (k, kv_heads, T, head_dim)
        k, t = first.shape[0], first.shape[2]
        batch = self._batch
        layers, spare_rows, _, width, _ = self._kbuf.shape
        shift = max(0, t - column) if batch else 0
        column = max(column, t)
        # The present rows keep their place in the buffers; the views start ``shift`` columns further left. With
        # no row left, every column is free: the views may start anywhere.
        start = self._start - shift if batch else min(_SPARE_LEFT, max(0, width - column - room))
        if start < 0 or batch + k > spare_rows or start + column + room > width:
            shape = (layers, max(batch + k, spare_rows), self.kv_heads, _SPARE_LEFT + column + room + _SPARE_COLUMNS,
                     self.head_dim)
            keys, values = self._kbuf.new_empty(shape), self._vbuf.new_empty(shape)
            held = column - shift  # the columns the present rows have filled
            for buf, old_rows in ((keys, self.keys), (values, self.values)) if batch else ():
                buf[:, :batch, :, _SPARE_LEFT + shift: _SPARE_LEFT + column] = old_rows[:, :, :, :held]
            self._kbuf, self._vbuf, start = keys, values, _SPARE_LEFT
        # Columns at or right of ``column`` are written by a step before any step reads them; the padding on the
        # left is read (masked), so it must hold finite numbers: zeros.
        for buf in (self._kbuf, self._vbuf):
            buf[:, :batch, :, start: start + shift] = 0
            buf[:, batch: batch + k, :, start: start + column - t] = 0
        for i, layer_cache in enumerate(cache.layers[: len(self.layers)]):
            self._kbuf[i, batch: batch + k, :, start + column - t: start + column] = layer_cache.keys
            self._vbuf[i, batch: batch + k, :, start + column - t: start + column] = layer_cache.values
        self._start = start
        self._batch, self._filled = batch + k, column
        self._view()
        self.pads = torch.cat([self.pads + shift, pads.to(self.pads.device) + (column - t)])
        self._mask()
        self._rows += [tuple(r) for r in rows]
        self.lora = self._terms(self._model, (), self._rows)
        return column

    def __call__(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """``token`` (batch, 1) at cache column ``position`` → next-token logits (batch, V)."""
        batch = token.shape[0]
        pk = self.packed
        x = F.embedding(token, self.embed)  # (batch, 1, H)
        cos, sin = self.rotary(x, position - self.pads)  # (batch, 1, head_dim) each: every row's own position
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (batch, 1, 1, head_dim): broadcast over heads
        end = position + 1
        self._filled = max(self._filled, end)
        mask = None if self.visible is None else self.visible[:, :, :, :end]  # (batch, 1, 1, end)
        for i, ly in enumerate(self.layers):
            h = _rms_norm(x, ly.norm1.weight, ly.norm1.variance_epsilon)
            lora = self.lora[i]
            q, k, v = _linears(h, (ly.q, ly.k, ly.v), (lora.get("q"), lora.get("k"), lora.get("v")), pk)
            q = q.view(batch, 1, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin  # (batch, heads, 1, head_dim)
            k = k * cos + _rotate_half(k) * sin  # (batch, kv_heads, 1, head_dim)
            self.keys[i, :, :, position:end] = k
            self.values[i, :, :, position:end] = v
            # One query per row attends to its cached positions (padding masked); GQA shares each kv head.
            attn = F.scaled_dot_product_attention(q, self.keys[i, :, :, :end], self.values[i, :, :, :end],
                                                  attn_mask=mask, scale=ly.scaling,
                                                  enable_gqa=self.heads != self.kv_heads)
            attn = attn.transpose(1, 2).reshape(batch, 1, -1)  # (batch, 1, heads * head_dim)
            x = x + _linear(attn, ly.o, lora.get("o"), pk)
            h = _rms_norm(x, ly.norm2.weight, ly.norm2.variance_epsilon)
            gate, up = _linears(h, (ly.gate, ly.up), (lora.get("gate"), lora.get("up")), pk)
            x = x + _linear(ly.act(gate) * up, ly.down, lora.get("down"), pk)
        h = _rms_norm(x, self.final_norm.weight, self.final_norm.variance_epsilon)
        return _linear(h, self.lm_head, None, pk)[:, -1, :]  # (batch, V)


# ---------------------------------------------------------------------------------------------- loop


class Decoder:
    """Decoding for one (model, tokenizer) pair.

    ``fast_path=True`` uses :class:`_LlamaStep` whenever it reproduces the model exactly, else the
    model's own forward; ``fast_path=False`` always uses the model's forward (for comparisons).
    After a :meth:`stream` ends, :attr:`last_path` names the step it used (``"llama-fast"`` or
    ``"model"``) and :attr:`last_token_ids` holds the ids it generated (end-of-reply token excluded).
    """

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", *,
                 fast_path: bool = True, prefix_cache: "PrefixCache | None" = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fast_path = fast_path
        self.prefix_cache = prefix_cache  # reuse of recent prompts' KV (editing/prefix_cache.py); None: off
        self.last_path: str | None = None
        self.last_token_ids: list[int] = []

    def _fast_reason(self, model_kwargs: dict[str, Any], deltas: Sequence[LowRankDelta]) -> str | None:
        """Why this request cannot take the fast step (``None`` = it can)."""
        if not self.fast_path:
            return "fast path off"
        reason = _LlamaStep.unsupported_reason(self.model, model_kwargs)
        if reason is None and deltas:
            reason = _LlamaStep.delta_reason(self.model, deltas)
            if reason is not None:  # a user's adapter slows down: worth a note in the log
                log.info("fast decode step off for this adapter: %s", reason)
        return reason

    def _step(self, cache: Any, capacity: int, model_kwargs: dict[str, Any],
              deltas: Sequence[LowRankDelta]) -> _LlamaStep | _ModelStep:
        reason = self._fast_reason(model_kwargs, deltas)
        if reason is None:
            return _LlamaStep(self.model, cache, capacity, deltas)
        log.debug("fast decode step off: %s", reason)
        return _ModelStep(self.model, cache, model_kwargs, deltas)

    @torch.inference_mode()
    def stream(self, input_ids: torch.Tensor, settings: GenerationSettings, deltas: Sequence[LowRankDelta] = (),
               **model_kwargs: Any) -> Iterator[str]:
        """Yield decoded text deltas for a continuation of ``input_ids`` (shape ``(1, T)``).

        ``deltas``: low-rank changes ``ΔW = B @ A`` to run with (a user's adapter), applied for this call
        only; the model's weights are never changed. Stops at an end-of-reply token (unless
        ``settings.ignore_eos``), at a stop string (which is not yielded), or after
        ``settings.max_new_tokens`` tokens.
        """
        from transformers import DynamicCache

        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
            raise InvalidRequest(f"decoding takes one non-empty sequence, shape (1, T); got {tuple(input_ids.shape)}")
        input_ids = input_ids.to(next(self.model.parameters()).device)  # a tokenizer's CPU ids, a model on any device
        device, prompt_len = input_ids.device, input_ids.shape[1]
        processors = _processors(settings)
        generator = None
        if not settings.greedy and settings.seed is not None:
            generator = torch.Generator(device=device).manual_seed(settings.seed)
        stop_ids = set() if settings.ignore_eos else eos_token_ids(self.model, self.tokenizer)
        # Every id so far, for the repetition penalty: (1, T + max_new_tokens), read as seen[:, :n].
        seen = torch.empty((1, prompt_len + settings.max_new_tokens), dtype=input_ids.dtype, device=device)
        seen[:, :prompt_len] = input_ids
        text = _TextStream(self.tokenizer, settings.stop)
        self.last_token_ids = text.ids  # filled as tokens arrive
        given = tuple(deltas)  # as the caller holds them: the prefix cache's key
        deltas = merge_per_module(deltas)  # one (A, B) per module: one extra matmul pair per projection
        # Prefill through the model itself: logits of the last position only, (1, 1, V) not (1, T, V).
        with apply_deltas(self.model, deltas):
            if self.prefix_cache is not None and not model_kwargs:
                out, cache = self.prefix_cache.prefill(self.model, input_ids, given)
            else:
                cache = DynamicCache(config=self.model.config)
                out = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1, **model_kwargs)
        logits = out.logits[:, -1, :]  # (1, V)
        step = self._step(cache, prompt_len + settings.max_new_tokens, model_kwargs, deltas)
        self.last_path = step.name
        for n in range(settings.max_new_tokens):
            window = seen[:, : prompt_len + n] if settings.penalize_prompt else seen[:, prompt_len: prompt_len + n]
            next_id = self._choose(logits, window, processors, settings, generator)
            if next_id in stop_ids:
                break
            seen[0, prompt_len + n] = next_id
            delta = text.push(next_id)
            if delta:
                yield delta
            if text.stopped or n + 1 == settings.max_new_tokens:
                break  # the last token's logits are never needed: skip its forward
            logits = step(seen[:, prompt_len + n: prompt_len + n + 1], prompt_len + n)
        tail = text.finish()
        if tail:
            yield tail

    @staticmethod
    def _choose(logits: torch.Tensor, seen: torch.Tensor, processors: Any, settings: GenerationSettings,
                generator: torch.Generator | None) -> int:
        """Next token id from ``logits`` (1, V) after repetition penalty / temperature / top-k / top-p."""
        logits = logits.float()
        if len(processors):
            logits = processors(seen, logits)
        if settings.greedy:
            return int(torch.argmax(logits, dim=-1))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))


def decode_stream(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", input_ids: torch.Tensor,
                  settings: GenerationSettings, deltas: Sequence[LowRankDelta] = (), *,
                  prefix_cache: "PrefixCache | None" = None, **model_kwargs: Any) -> Iterator[str]:
    """Yield decoded text deltas for a continuation of ``input_ids`` (shape ``(1, T)``); see :class:`Decoder`."""
    return Decoder(model, tokenizer, prefix_cache=prefix_cache).stream(input_ids, settings, deltas, **model_kwargs)
