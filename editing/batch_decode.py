"""Several requests, each with its own user's deltas, in one decode loop.

:meth:`BatchDecoder.run` serves a batch of prompts of different lengths at once:

* **prefill** — the prompts left-padded into one ``(batch, T_max)`` tensor, with an attention mask that
  hides each row's padding and position ids that start at 0 on each row's first real token, run once
  through the model under :func:`editing.hooks.apply_row_deltas` (row ``b`` gets exactly its own deltas);
* **decode** — one step per new token for every unfinished row: :class:`~editing.generation._LlamaStep`
  on the fast path (per-row LoRA as zero-padded rank stacks and ``bmm``; rows without a delta add zeros),
  else the model's own forward with a ``DynamicCache`` under the same per-row hooks (any architecture
  whose projections the deltas name; a PEFT model's ``adapter_names=[...]`` mixed batch passes through as a
  model kwarg). A row that ends (end-of-reply token, stop string, ``max_new_tokens``) leaves the batch:
  its KV cache rows and LoRA rows are dropped, so later steps compute only the rows still going, and its
  reply is handed out at once (``on_done``): a short reply is not held until the batch's longest row ends.

Greedy row ``b`` gives the same tokens as :meth:`editing.generation.Decoder.stream` of that prompt alone
(tests check it token for token in fp32); the logits differ from the solo run only by float rounding (masked
padding and batched matmuls sum in another order). In bf16 that rounding is coarse enough to flip a near tie: on
SmolLM2 a row padded by 10 columns had logits up to 0.97 off its solo run's and a different first token, so in
bf16 a batched reply may differ from the solo one (both are the model's greedy reply within bf16 rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from editing.errors import InvalidRequest
from editing.generation import (
    Decoder,
    GenerationSettings,
    _LlamaStep,
    _ModelStep,
    _processors,
    _TextStream,
    eos_token_ids,
)
from editing.hooks import apply_row_deltas, stack_row_deltas
from editing.requests import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from editing.prefix_cache import PrefixCache

__all__ = ["BatchDecoder", "decode_batch"]

log = logging.getLogger(__name__)

# admit(rows still decoding) -> the (prompt (1, T), deltas) pairs that join the running batch now; a pair may carry a
# third item, the prompt's prefill already made elsewhere (:meth:`BatchDecoder.prefill_one`: (logits (1, V), cache)),
# and then only its cache is copied in
Admit = Callable[[int], Sequence[tuple[Any, ...]]]


def _check_batch(prompts: Sequence[torch.Tensor],
                 deltas_per_row: Sequence[Sequence[LowRankDelta]] | None) -> list[tuple[LowRankDelta, ...]]:
    """Validate a batch; return one tuple of deltas per row."""
    if isinstance(prompts, torch.Tensor) or not prompts:
        raise InvalidRequest("prompts must be a non-empty list of (1, T) id tensors, one per request")
    for i, ids in enumerate(prompts):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise InvalidRequest(f"prompts[{i}] must be one non-empty sequence of shape (1, T); got {shape}")
    if deltas_per_row is None:
        return [() for _ in prompts]
    if len(deltas_per_row) != len(prompts):
        raise InvalidRequest(f"deltas_per_row has {len(deltas_per_row)} entries for {len(prompts)} prompts; "
                             "give one list per row ([] for a row that runs on the base model)")
    rows = []
    for i, row in enumerate(deltas_per_row):
        if isinstance(row, LowRankDelta) or not all(isinstance(d, LowRankDelta) for d in row):
            raise InvalidRequest(f"deltas_per_row[{i}] must be a list of LowRankDelta, got {row!r:.80}")
        rows.append(tuple(row))
    return rows


def _left_pad(prompts: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids (batch, T_max), pads (batch, 1))``: each prompt right-aligned after ``pads[b]`` pad ids."""
    width = max(ids.shape[1] for ids in prompts)
    device = prompts[0].device
    input_ids = torch.full((len(prompts), width), pad_id, dtype=prompts[0].dtype, device=device)
    for b, ids in enumerate(prompts):
        input_ids[b, width - ids.shape[1]:] = ids[0]
    pads = torch.tensor([[width - ids.shape[1]] for ids in prompts], device=device)  # (batch, 1)
    return input_ids, pads


class BatchDecoder:
    """Batched decoding for one (model, tokenizer) pair; see the module docstring.

    After :meth:`run`, :attr:`last_path` names the decode step used (``"llama-fast"`` or ``"model"``) and
    :attr:`last_token_ids` holds each row's generated ids (end-of-reply token excluded).
    """

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", *,
                 fast_path: bool = True, prefix_cache: "PrefixCache | None" = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.solo = Decoder(model, tokenizer, fast_path=fast_path)  # path choice and token choice are shared
        self.prefix_cache = prefix_cache  # one-row prefills (a request joining alone) reuse recent prompts' KV
        self.last_path: str | None = None
        self.last_token_ids: list[list[int]] = []
        self.joined = 0  # rows that joined a running batch (continuous batching), over this decoder's life

    def _pad_id(self) -> int:
        if self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        return min(eos_token_ids(self.model, self.tokenizer), default=0)  # masked out: any valid id does

    def _on_model(self, prompts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The prompts on the model's device (a tokenizer gives CPU tensors; the model may be on an accelerator)."""
        device = next(self.model.parameters()).device
        return [ids.to(device) for ids in prompts]

    def _stacks(self, rows: list[tuple[LowRankDelta, ...]]) -> dict[str, Any]:
        """The rows' deltas stacked per module (see :func:`editing.hooks.stack_row_deltas`); {} when none."""
        weight = self.model.get_input_embeddings().weight
        return stack_row_deltas(rows, device=weight.device, dtype=weight.dtype) if any(rows) else {}

    def _prefill(self, input_ids: torch.Tensor, pads: torch.Tensor, stacks: dict[str, Any],
                 model_kwargs: dict[str, Any],
                 rows: Sequence[tuple[LowRankDelta, ...]] = ()) -> tuple[torch.Tensor, Any]:
        """One forward over the padded batch → (last position's logits (batch, V), the filled cache)."""
        from transformers import DynamicCache

        if self.prefix_cache is not None and input_ids.shape[0] == 1 and not model_kwargs:
            with apply_row_deltas(self.model, stacks):  # one row, unpadded: as a solo prefill
                out, cache = self.prefix_cache.prefill(self.model, input_ids, rows[0] if rows else ())
            return out.logits[:, -1, :], cache
        columns = torch.arange(input_ids.shape[1], device=input_ids.device)
        attention_mask = (columns >= pads).long()  # (batch, T_max): 0 on padding
        position_ids = (columns - pads).clamp(min=0)  # (batch, T_max): 0 at each row's first real token
        cache = DynamicCache(config=self.model.config)
        with apply_row_deltas(self.model, stacks):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True, logits_to_keep=1, **model_kwargs)
        return out.logits[:, -1, :], cache

    @torch.inference_mode()
    def prefill_one(self, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta] = ()) -> tuple[torch.Tensor, Any]:
        """One prompt's prefill, made ahead of its joining a running batch: ``(logits (1, V), cache)``, to hand back
        as the third item of its ``admit`` entry. Uses the prefix cache like a solo prefill. Made on another copy of
        the model (the engine's prefill process): the per-row delta hooks of a prefill are module-global, so two
        threads must not run forwards through one model at once."""
        rows = _check_batch([input_ids], [deltas])
        ids = self._on_model([input_ids])[0]
        pads = torch.zeros((1, 1), dtype=torch.long, device=ids.device)
        return self._prefill(ids, pads, self._stacks(rows), {}, rows)

    def _step(self, cache: Any, capacity: int, pads: torch.Tensor, rows: list[tuple[LowRankDelta, ...]],
              stacks: dict[str, Any], model_kwargs: dict[str, Any]) -> _LlamaStep | _ModelStep:
        reason = self.solo._fast_reason(model_kwargs, [d for row in rows for d in row])
        if reason is None:
            return _LlamaStep(self.model, cache, capacity, pads=pads, row_deltas=rows)
        log.debug("fast decode step off for the batch: %s", reason)
        return _ModelStep(self.model, cache, model_kwargs, pads=pads, row_loras=stacks or None)

    @torch.inference_mode()
    def run(self, prompts: Sequence[torch.Tensor], settings: GenerationSettings,
            deltas_per_row: Sequence[Sequence[LowRankDelta]] | None = None, *,
            on_piece: Callable[[int, str], None] | None = None, on_done: Callable[[int, str], None] | None = None,
            admit: Admit | None = None, **model_kwargs: Any) -> list[str]:
        """The reply to each prompt (each ``(1, T_i)``), row ``b`` run with ``deltas_per_row[b]``.

        Each row stops on its own (end-of-reply token unless ``settings.ignore_eos``, stop string, or
        ``settings.max_new_tokens``). Per-row model kwargs are lists with one entry per row. ``on_piece(row,
        text)`` is called with each row's text as soon as it is safe to show (streaming several requests at once);
        the pieces of a row concatenate to its reply. ``on_done(row, reply)`` is called once per row, as soon as
        that row ends (after its last piece), while the other rows go on decoding.

        ``admit(active)`` (continuous batching, fast step only): called after every step with the number of rows
        still decoding; the ``(prompt, deltas)`` pairs it returns join the batch at once (their prefill runs, then
        they decode with the others) as rows ``len(prompts)``, ``len(prompts) + 1``, … in the order given; the
        result holds their replies too. A joined row gives the tokens it would alone, like every row.
        """
        rows = _check_batch(prompts, deltas_per_row)
        prompts = self._on_model(prompts)
        lengths = [ids.shape[1] for ids in prompts]
        input_ids, pads = _left_pad(prompts, self._pad_id())
        width, device = input_ids.shape[1], input_ids.device
        processors = _processors(settings)
        stop_ids = set() if settings.ignore_eos else eos_token_ids(self.model, self.tokenizer)
        seen: list[torch.Tensor] = []
        texts: list[_TextStream] = []
        generators: list[torch.Generator | None] = []

        def open_rows(new: Sequence[torch.Tensor]) -> None:
            for ids in new:
                seen.append(torch.cat([ids, ids.new_empty((1, settings.max_new_tokens))], dim=1))
                texts.append(_TextStream(self.tokenizer, settings.stop))
                sampled = not settings.greedy and settings.seed is not None
                generators.append(torch.Generator(device=device).manual_seed(settings.seed) if sampled else None)

        open_rows(prompts)
        pieces: list[list[str]] = [[] for _ in prompts]
        made = [0] * len(prompts)  # tokens generated per row
        replies: dict[int, str] = {}

        def finish(row: int) -> None:
            """Row ``row`` has ended: flush its text and hand its reply out."""
            tail = texts[row].finish()
            if on_piece is not None and tail:
                on_piece(row, tail)
            replies[row] = "".join(pieces[row]) + tail
            if on_done is not None:
                on_done(row, replies[row])

        stacks = self._stacks(rows)  # once for the prefill and the general step
        logits, cache = self._prefill(input_ids, pads, stacks, model_kwargs, rows)
        step = self._step(cache, width + settings.max_new_tokens, pads, rows, stacks, model_kwargs)
        self.last_path = step.name
        can_join = admit is not None and isinstance(step, _LlamaStep)
        active = list(range(len(prompts)))  # batch position → request row
        column = width  # the cache column the next fed token is written to
        while True:
            keep, tokens = [], []
            for pos, row in enumerate(active):
                start = 0 if settings.penalize_prompt else lengths[row]
                window = seen[row][:, start: lengths[row] + made[row]]
                next_id = Decoder._choose(logits[pos: pos + 1], window, processors, settings, generators[row])
                if next_id in stop_ids:
                    continue
                seen[row][0, lengths[row] + made[row]] = next_id
                made[row] += 1
                piece = texts[row].push(next_id)
                pieces[row].append(piece)
                if on_piece is not None and piece:
                    on_piece(row, piece)
                if not texts[row].stopped and made[row] < settings.max_new_tokens:
                    keep.append(pos)  # the last tokens' logits are never needed: no forward for a row at its cap
                    tokens.append(next_id)
            if len(keep) < len(active):
                kept = set(keep)
                for pos, row in enumerate(active):
                    if pos not in kept:
                        finish(row)
                step.select(torch.tensor(keep, dtype=torch.long, device=device))
                active = [active[pos] for pos in keep]
                if isinstance(step, _LlamaStep):
                    column -= step.compact(column)  # the rows that left may have held the cache's left part
            if keep:
                token = torch.tensor(tokens, dtype=input_ids.dtype, device=device).unsqueeze(1)  # (rows left, 1)
                logits = step(token, column)
                column += 1
            joining = list(admit(len(active))) if can_join else []  # type: ignore[misc]
            if not keep and not joining:
                break
            if joining:
                logits, column = self._join(step, joining, logits if keep else None, column, settings, model_kwargs)
                first = len(lengths)
                new_prompts = [entry[0] for entry in joining]
                lengths += [ids.shape[1] for ids in new_prompts]
                open_rows(new_prompts)
                pieces += [[] for _ in new_prompts]
                made += [0] * len(new_prompts)
                active += list(range(first, first + len(new_prompts)))
                self.joined += len(new_prompts)
        self.last_token_ids = [text.ids for text in texts]
        return [replies[row] for row in range(len(texts))]

    def _join(self, step: _LlamaStep, joining: Sequence[tuple[Any, ...]], logits: torch.Tensor | None, column: int,
              settings: GenerationSettings, model_kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Add the joining prompts to ``step`` (prefilled here, or already: an entry's third item), in their order;
        the logits of every row and the new column."""
        parts = [] if logits is None else [logits]
        fresh: list[tuple[torch.Tensor, Sequence[LowRankDelta]]] = []

        def prefill_fresh() -> None:
            nonlocal column
            if not fresh:
                return
            prompts = [ids for ids, _ in fresh]
            rows = _check_batch(prompts, [deltas for _, deltas in fresh])
            prompts = self._on_model(prompts)
            input_ids, pads = _left_pad(prompts, self._pad_id())
            new_logits, cache = self._prefill(input_ids, pads, self._stacks(rows), model_kwargs, rows)
            column = step.join(cache, column, pads, rows, settings.max_new_tokens)
            parts.append(new_logits)
            fresh.clear()

        for entry in joining:
            ready = entry[2] if len(entry) > 2 else None
            if ready is None:
                fresh.append((entry[0], entry[1]))
                continue
            prefill_fresh()  # rows keep the order they were given in
            new_logits, cache = ready
            rows = _check_batch([entry[0]], [entry[1]])
            pads = torch.zeros((1, 1), dtype=torch.long, device=new_logits.device)
            column = step.join(cache, column, pads, rows, settings.max_new_tokens)
            parts.append(new_logits)
        prefill_fresh()
        return torch.cat(parts), column


def decode_batch(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[torch.Tensor],
                 settings: GenerationSettings, deltas_per_row: Sequence[Sequence[LowRankDelta]] | None = None, *,
                 on_piece: Callable[[int, str], None] | None = None, on_done: Callable[[int, str], None] | None = None,
                 admit: Admit | None = None, prefix_cache: "PrefixCache | None" = None,
                 **model_kwargs: Any) -> list[str]:
    """The reply to each prompt in one decode loop, each row with its own deltas; see :class:`BatchDecoder`."""
    return BatchDecoder(model, tokenizer, prefix_cache=prefix_cache).run(
        prompts, settings, deltas_per_row, on_piece=on_piece, on_done=on_done, admit=admit, **model_kwargs)
