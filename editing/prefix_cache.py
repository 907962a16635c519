"""Recent prompts' KV caches, reused so that a prompt's prefill computes only its new tail.

A chat prompt starts the way the ones before it did: the system message is a constant, and within a session the
history up to the last turn is the prompt of that turn (the memory notes ride in the newest user message, at the
end). Prefill is the one part of a turn that batching does not share (a prompt's tokens cost about as much in a
batch as alone), so every prefilled token saved is saved for each request. This keeps the prompt KV of recent
prefills, and a new prompt of one row reuses the longest prefix it shares with one of them: the model runs on the
remaining tokens only, at their positions, on top of a copy of that prefix's KV (the caller's forward then appends
to the copy; the stored tensors are never written).

An entry is valid only for the weights and the deltas it was computed with: the key holds every parameter's
storage and version counter (an in-place edit bumps it) and the identity and version of each delta tensor (whose
references the entry keeps, so an id is never reused while the entry lives). Entries are evicted least recently
used first, past ``max_bytes``. At least one token is always computed (its logits start the reply), and a shared
prefix shorter than ``min_tokens`` is not worth a copy.

The result is the model's own prefill up to float rounding: the prefix's KV come from a forward over fewer tokens,
whose matmuls may sum in another order. ``PLLM_PREFIX_CACHE_MB=0`` turns the cache off.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from editing.errors import InvalidRequest
from editing.requests import LowRankDelta

__all__ = ["PrefixCache"]

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    key: tuple[Any, ...]
    ids: torch.Tensor  # (T,)
    keys: list[torch.Tensor]  # per layer, (1, kv_heads, T, head_dim)
    values: list[torch.Tensor]
    refs: tuple[torch.Tensor, ...]  # the delta tensors named in key (kept alive so their ids stay theirs)
    nbytes: int


def _version(tensor: torch.Tensor) -> int:
    """The tensor's version counter (bumped by every in-place change); an inference-mode tensor has none (-1)."""
    return -1 if tensor.is_inference() else tensor._version


class PrefixCache:
    """Prompt KV of recent single-row prefills, per (weights, deltas); see the module docstring."""

    def __init__(self, max_bytes: int, *, min_tokens: int = 16) -> None:
        if max_bytes < 0 or min_tokens < 1:
            raise InvalidRequest(f"a prefix cache needs max_bytes >= 0 and min_tokens >= 1, got {max_bytes}, "
                                 f"{min_tokens}")
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0  # prefills that reused a prefix
        self.misses = 0
        self.reused_tokens = 0  # prompt tokens not recomputed
        self.computed_tokens = 0  # prompt tokens computed (hits and misses)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored KV tensors."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(model: Any, deltas: Sequence[LowRankDelta]) -> tuple[tuple[Any, ...], tuple[torch.Tensor, ...]]:
        weights = tuple((p.data_ptr(), _version(p)) for p in model.parameters())
        named = tuple((d.module, id(d.A), _version(d.A), id(d.B), _version(d.B)) for d in deltas)
        return (id(model), weights, named), tuple(t for d in deltas for t in (d.A, d.B))

    def match(self, model: Any, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta] = ()) -> tuple[int, Any]:
        """``(m, cache)``: a ``DynamicCache`` holding a copy of the KV of ``input_ids[:, :m]`` from the best
        entry, or ``(0, None)``. ``m`` is at most ``T - 1``."""
        return self._match(model, input_ids, self._key(model, deltas)[0])

    def _match(self, model: Any, input_ids: torch.Tensor, key: tuple[Any, ...]) -> tuple[int, Any]:
        if self.max_bytes == 0 or input_ids.shape[0] != 1 or input_ids.shape[1] <= self.min_tokens:
            return 0, None
        ids = input_ids[0]
        best, best_len = None, 0
        with self._lock:
            for slot, entry in self._entries.items():
                if entry.key != key:
                    continue
                n = min(len(entry.ids), len(ids) - 1)
                same = (entry.ids[:n] == ids[:n]).to(torch.int8)
                shared = int(same.cumprod(0).sum()) if n else 0
                if shared > best_len:
                    best, best_len = slot, shared
            if best is None or best_len < self.min_tokens:
                self.misses += 1
                return 0, None
            entry = self._entries[best]
            self._entries.move_to_end(best)
            self.hits += 1
            self.reused_tokens += best_len
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        for layer, (k, v) in enumerate(zip(entry.keys, entry.values)):
            cache.update(k[:, :, :best_len].clone(), v[:, :, :best_len].clone(), layer)
        return best_len, cache

    def add(self, model: Any, input_ids: torch.Tensor, cache: Any, deltas: Sequence[LowRankDelta] = ()) -> None:
        """Keep the KV of ``input_ids`` (one row) from ``cache``, right after its prefill (copied: the caller's
        decoding goes on writing to its own)."""
        self._add(input_ids, cache, *self._key(model, deltas))

    def _add(self, input_ids: torch.Tensor, cache: Any, key: tuple[Any, ...], refs: tuple[torch.Tensor, ...]) -> None:
        if self.max_bytes == 0 or input_ids.shape[0] != 1:
            return
        length = input_ids.shape[1]
        layers = cache.layers
        if not layers or layers[0].keys is None or layers[0].keys.shape[-2] != length:
            return  # not a plain prefill of exactly these tokens: nothing safe to keep
        nbytes = 2 * sum(layer.keys.numel() * layer.keys.element_size() for layer in layers)
        if nbytes > self.max_bytes:
            return
        ids = input_ids[0].detach().clone()
        with self._lock:
            for slot, entry in list(self._entries.items()):
                if entry.key[0] == key[0] and entry.key[1] != key[1]:
                    self._drop(slot)  # computed before the weights changed: version counters only grow
                    continue
                if entry.key != key:
                    continue
                if len(entry.ids) >= length and bool((entry.ids[:length] == ids).all()):
                    self._entries.move_to_end(slot)  # already held (a repeated prompt): keep the entry as it is
                    return
                if len(entry.ids) < length and bool((entry.ids == ids[: len(entry.ids)]).all()):
                    self._drop(slot)  # this prompt extends the entry: the new one covers it
            keys = [layer.keys.detach().clone() for layer in layers]
            values = [layer.values.detach().clone() for layer in layers]
            slot, self._next = self._next, self._next + 1
            self._entries[slot] = _Entry(key, ids, keys, values, refs, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def _drop(self, slot: int) -> None:
        entry = self._entries.pop(slot)
        self._bytes -= entry.nbytes

    def prefill(self, model: Any, input_ids: torch.Tensor, deltas: Sequence[LowRankDelta] = (),
                **forward_kwargs: Any) -> tuple[Any, Any]:
        """``model``'s prefill of ``input_ids`` (one row) from the longest stored prefix: ``(output, cache)``.

        Run it where the row's deltas are already applied (hooks); ``deltas`` only key the entries. The output is
        the model's (``logits_to_keep=1``: the last position's logits), the cache holds the whole prompt's KV, and
        the prompt is stored for later prompts."""
        from transformers import DynamicCache

        key, refs = self._key(model, deltas)  # once: it walks every parameter
        start, cache = self._match(model, input_ids, key)
        if cache is None:
            cache = DynamicCache(config=model.config)
        length = input_ids.shape[1]
        positions = torch.arange(start, length, device=input_ids.device)[None]
        out = model(input_ids=input_ids[:, start:], position_ids=positions, cache=cache, use_cache=True,
                    logits_to_keep=1, **forward_kwargs)
        with self._lock:
            self.computed_tokens += length - start
        log.debug("prefill of %d tokens: %d reused, %d computed", length, start, length - start)
        self._add(input_ids, cache, key, refs)
        return out, cache

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        """Counters for logs and benches."""
        return {"entries": len(self._entries), "bytes": self._bytes, "hits": self.hits, "misses": self.misses,
                "reused_tokens": self.reused_tokens, "computed_tokens": self.computed_tokens}
