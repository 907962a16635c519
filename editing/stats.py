"""Second moments C = E[k kᵀ] of a module's input keys, computed once per (model, module, tokens) and cached.

The keys come from a corpus: a text file the user gives, else text the model writes itself from a few
neutral starts (reproducible: a private seeded generator). Every requested module is measured in the
same pass. Each result is saved under ``cache_dir/<model id>/`` as a ``.pt`` tensor with a json sidecar
(written last, so a tensor without one is incomplete and is recomputed), and later calls — in this
process or another — load it instead of recomputing. The cache belongs to the :class:`SecondMoments`
object that is given it; nothing is cached at module level.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from editing.errors import InvalidRequest
from editing.hooks import capture, find_module, inference_mode_of
from editing.sampling import sample_token_ids

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["SecondMoments", "NEUTRAL_STARTS", "key_covariance", "preserved_outer"]

log = logging.getLogger(__name__)

NEUTRAL_STARTS = ("The", "In", "It", "A", "This", "We", "When", "There", "One", "After", "My", "People")
STATS_VERSION = 1


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


class SecondMoments:
    """E[k kᵀ] ``(in, in)`` (float32, CPU) of the inputs of named modules of one model."""

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", *, model_id: str,
                 cache_dir: Path | str, corpus: Path | str | None = None, seq_len: int = 128,
                 batch_size: int = 8, seed: int = 0) -> None:
        if not model_id.strip():
            raise InvalidRequest("model_id must name the model (it keys the cache); got an empty string")
        if corpus is not None and not Path(corpus).is_file():
            raise InvalidRequest(f"statistics corpus {Path(corpus).resolve()} is not a file; pass a text file or None "
                                 "(None: the model writes its own corpus)")
        if seq_len < 2 or batch_size < 1:
            raise InvalidRequest(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.cache_dir = Path(cache_dir) / _slug(model_id)
        self.corpus = Path(corpus) if corpus is not None else None
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.computed = 0  # modules measured (not loaded) by this object — how tests see the cache work
        self._memory: dict[tuple[str, int], torch.Tensor] = {}
        self._corpus_tag: str | None = None

    # ------------------------------------------------------------------------------ public

    def second_moment(self, module: str, n_tokens: int) -> torch.Tensor:
        """C for ``module`` from ``n_tokens`` tokens: from memory, else the disk cache, else measured."""
        return self.prefetch([module], n_tokens)[module]

    def prefetch(self, modules: Sequence[str], n_tokens: int) -> Mapping[str, torch.Tensor]:
        """C for each of ``modules``; the missing ones are measured together in one pass over the corpus."""
        if n_tokens < 1:
            raise InvalidRequest(f"n_tokens must be >= 1, got {n_tokens}")
        for name in modules:
            find_module(self.model, name)
        missing = [m for m in modules if (m, n_tokens) not in self._memory and not self._load(m, n_tokens)]
        if missing:
            for name, moment in self._measure(missing, n_tokens).items():
                self._save(name, n_tokens, moment)
                self._memory[(name, n_tokens)] = moment
        return {m: self._memory[(m, n_tokens)] for m in modules}

    # ------------------------------------------------------------------------------ cache

    def corpus_tag(self) -> str:
        """``generated-s<seed>-L<seq_len>`` or the first 12 hex digits of the corpus file's sha256."""
        if self._corpus_tag is None:
            if self.corpus is None:
                self._corpus_tag = f"generated-s{self.seed}-L{self.seq_len}"
            else:
                self._corpus_tag = hashlib.sha256(self.corpus.read_bytes()).hexdigest()[:12]
        return self._corpus_tag

    def path_for(self, module: str, n_tokens: int) -> Path:
        return self.cache_dir / f"{_slug(module)}--{n_tokens}--{self.corpus_tag()}.pt"

    def _load(self, module: str, n_tokens: int) -> bool:
        path = self.path_for(module, n_tokens)
        sidecar = path.with_suffix(".json")
        if not (path.is_file() and sidecar.is_file()):
            return False
        meta = json.loads(sidecar.read_text())
        if meta.get("version") != STATS_VERSION or meta.get("module") != module:
            log.warning("ignoring statistics %s: written by another version or for another module", path)
            return False
        self._memory[(module, n_tokens)] = torch.load(path, map_location="cpu", weights_only=True)
        return True

    def _save(self, module: str, n_tokens: int, moment: torch.Tensor) -> None:
        path = self.path_for(module, n_tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(moment, tmp)
        os.replace(tmp, path)
        meta = {"version": STATS_VERSION, "model_id": self.model_id, "module": module, "n_tokens": n_tokens,
                "corpus": str(self.corpus) if self.corpus else None, "corpus_tag": self.corpus_tag(),
                "dim": moment.shape[0], "created": time.time()}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))  # last: marks the tensor complete

    # ------------------------------------------------------------------------------ measuring

    def _batches(self, n_tokens: int) -> Iterator[torch.Tensor]:
        """``(B, seq_len)`` id batches holding at least ``n_tokens`` tokens in all (fewer if the corpus is short)."""
        device = next(self.model.parameters()).device
        if self.corpus is None:
            done, round_ = 0, 0
            while done < n_tokens:
                starts = [NEUTRAL_STARTS[(round_ * self.batch_size + i) % len(NEUTRAL_STARTS)]
                          for i in range(self.batch_size)]
                yield sample_token_ids(self.model, self.tokenizer, starts, self.seq_len - 1,
                                       seed=self.seed + round_)
                done, round_ = done + self.batch_size * self.seq_len, round_ + 1
            return
        ids = self.tokenizer(self.corpus.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        chunks = [ids[i:i + self.seq_len] for i in range(0, min(len(ids), n_tokens), self.seq_len)]
        if len(ids) < n_tokens:
            log.warning("corpus %s has %d tokens, fewer than the %d asked for; using them all",
                        self.corpus, len(ids), n_tokens)
        for i in range(0, len(chunks), self.batch_size):
            group = chunks[i:i + self.batch_size]
            width = min(len(c) for c in group)  # equal lengths, no padding: the short tail is trimmed
            yield torch.tensor([c[:width] for c in group], device=device)

    @torch.no_grad()
    def _measure(self, modules: Sequence[str], n_tokens: int) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        with inference_mode_of(self.model):
            for batch in self._batches(n_tokens):
                with capture_all(self.model, modules) as seen:
                    self.model(input_ids=batch)
                for name in modules:
                    keys = seen[name][0].flatten(0, -2).double()  # (B·T, in)
                    sums[name] = sums.get(name, 0) + keys.T @ keys  # (in, in)
                count += batch.numel()
                if count >= n_tokens:
                    break
        self.computed += len(modules)
        log.info("second moments of %d module(s) from %d tokens in %.1f s", len(modules), count,
                 time.perf_counter() - t0)
        return {name: (s / count).float().cpu() for name, s in sums.items()}


@contextmanager
def capture_all(model: "PreTrainedModel", modules: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Capture the inputs of several modules on one forward: ``{name: [input, ...]}``."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(capture(model, name, what="input")) for name in modules}


def key_covariance(stats: SecondMoments | None, module: str, keys: torch.Tensor, *, n_tokens: int,
                   ridge: float) -> torch.Tensor:
    """C ``(in, in)`` (CPU, float32) for ``module``, with a relative ridge.

    Without statistics C is isotropic at the scale of the given keys ``(n, in)`` — mean ‖k‖² / d — so the
    weights that mix C with keys' outer products (λ, preserve_weight) mean the same with or without them
    (kᵀ C⁻¹ k ≈ d either way).
    """
    keys = keys.detach().float().cpu().reshape(-1, keys.shape[-1])
    dim = keys.shape[1]
    if stats is None:
        return torch.eye(dim) * keys.pow(2).sum(dim=1).mean() / dim
    c = stats.second_moment(module, n_tokens)
    return c + ridge * c.diagonal().mean() * torch.eye(dim)


def preserved_outer(preserve: Mapping[str, torch.Tensor] | None, module: str, dim: int) -> torch.Tensor:
    """``K_pᵀ K_p`` ``(in, in)`` of the earlier edits' keys ``K_p`` ``(m, in)`` at ``module`` (zeros if none)."""
    keys = (preserve or {}).get(module)
    if keys is None:
        return torch.zeros(dim, dim)
    keys = keys.detach().float().cpu().reshape(-1, dim)
    return keys.T @ keys
