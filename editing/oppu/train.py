"""Train one user's adapter on their examples: one entry point for LoRA, IA3 and prompt tuning (PEFT).

:func:`train_adapter` wraps the model it is given with PEFT, runs a plain torch loop (AdamW, loss on the target
spans only), takes the adapter's weights out and unwraps the model again. Invariant: **the model at the end is
the model at the beginning** — same weights, same module objects, same ``requires_grad`` flags, same train/eval
flag, no gradients left — so it may be the worker's private copy of the base, reused for the next user.

A refresh passes ``init=`` (the user's current version): training continues from its weights on the new examples
plus a replay sample of the old ones (``replay=``, ``config.replay_fraction`` old per new). An ``init`` made on
another base model is never loaded: the adapter trains from scratch (OPPU's "the base changed: re-train").

The device is the model's; on CUDA the forward pass runs under bf16 autocast (the adapter's weights stay fp32).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from editing.errors import InvalidRequest
from editing.oppu.config import AdapterTrainConfig
from editing.oppu.data import IGNORE, Encoded, TrainExample, encode
from editing.requests import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ADAPTER_NAME", "TrainedAdapter", "Progress", "train_adapter", "attached", "example_loss",
           "base_model_id_of"]

log = logging.getLogger(__name__)

ADAPTER_NAME = "oppu"  # the PEFT adapter name while training (the folder format does not keep it)
_PEFT_PREFIX = "base_model.model."  # PEFT's state-dict prefix for the wrapped causal LM's modules

Progress = Callable[[int, int, float], None]  # (step done, total steps, that step's loss)


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained adapter, detached from any model: PEFT's state dict (CPU) and config, and how it was made.

    ``extra`` is saved into ``pllm.json`` beside the adapter (e.g. the ids of the turns it was trained on).
    """

    config: AdapterTrainConfig
    peft_config: dict[str, Any]  # PEFT's config as a dict (what adapter_config.json holds)
    state: dict[str, torch.Tensor]  # PEFT's adapter state dict, keys as PEFT saves them
    base_model_id: str
    losses: tuple[float, ...] = ()  # per step
    seconds: float = 0.0
    n_examples: int = 0
    n_replayed: int = 0
    continued: bool = False  # trained on from a previous version's weights (a refresh), not from scratch
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.config.kind

    def lora_deltas(self) -> list[LowRankDelta]:
        """A LoRA adapter as :class:`LowRankDelta` s (``B·scaling``, ``A``): served by the knowledge-edit view path.

        ``ΔW = (alpha / r) · B @ A``; the scaling is folded into ``B`` so the delta has scaling 1, as
        :mod:`editing.adapters` stores them.
        """
        if self.kind != "lora":
            raise InvalidRequest(f"only a LoRA adapter is a set of low-rank deltas; this one is {self.kind!r}")
        scaling = self.config.alpha / self.config.r
        deltas = []
        for key in sorted(k for k in self.state if k.endswith(".lora_A.weight")):
            module = key[len(_PEFT_PREFIX):-len(".lora_A.weight")]
            A = self.state[key]  # (r, in)
            B = self.state[key.replace(".lora_A.", ".lora_B.")]  # (out, r)
            deltas.append(LowRankDelta(module, A.clone(), B * scaling))
        return deltas


def base_model_id_of(model: "PreTrainedModel") -> str:
    """The id a model records with its artifacts when the caller gives none: its config's ``name_or_path``."""
    name = getattr(model.config, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    return str(name) or type(model).__name__


# ---------------------------------------------------------------------------------- PEFT wrapping


def _peft_config(config: AdapterTrainConfig, tokenizer: "PreTrainedTokenizerBase") -> Any:
    from peft import IA3Config, LoraConfig, PromptTuningConfig, TaskType

    layers = list(config.layers_to_transform) if config.layers_to_transform else None
    if config.kind == "lora":
        return LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=config.modules(), bias="none", task_type=TaskType.CAUSAL_LM,
                          layers_to_transform=layers)
    if config.kind == "ia3":
        return IA3Config(target_modules=config.modules(), feedforward_modules=config.feedforward(),
                         task_type=TaskType.CAUSAL_LM)
    # RANDOM here, then set from the init text's embeddings below: PEFT's TEXT init loads the tokenizer
    # from a path (I/O this module does not need), and its RANDOM init is N(0, 1), far from token scale.
    return PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type=TaskType.CAUSAL_LM,
                              prompt_tuning_init="RANDOM")


def _init_soft_prompt(peft_model: Any, tokenizer: "PreTrainedTokenizerBase", config: AdapterTrainConfig) -> None:
    ids = tokenizer(config.prompt_init_text, add_special_tokens=False)["input_ids"]
    ids = (ids * math.ceil(config.num_virtual_tokens / len(ids)))[:config.num_virtual_tokens]
    words = peft_model.get_input_embeddings().weight  # (vocab, hidden)
    table = peft_model.prompt_encoder[ADAPTER_NAME].embedding.weight  # (virtual tokens, hidden)
    with torch.no_grad():
        table.copy_(words[torch.tensor(ids, device=words.device)].to(table.dtype))


@contextmanager
def attached(model: "PreTrainedModel", config: AdapterTrainConfig, tokenizer: "PreTrainedTokenizerBase", *,
             state: dict[str, torch.Tensor] | None = None) -> Iterator[Any]:
    """``model`` wrapped by a fresh PEFT adapter of ``config`` (loaded from ``state`` if given), unwrapped after.

    On exit the model is restored exactly: PEFT's layers removed (never merged), ``requires_grad`` and the
    train/eval flag as they were, no gradients.
    """
    from peft import get_peft_model, set_peft_model_state_dict

    was_training = model.training
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    peft_model = get_peft_model(model, _peft_config(config, tokenizer), adapter_name=ADAPTER_NAME)
    try:
        if config.kind == "prompt":
            _init_soft_prompt(peft_model, tokenizer, config)
        if state is not None:
            result = set_peft_model_state_dict(peft_model, state, adapter_name=ADAPTER_NAME)
            # Prompt tuning's table loads outside the module tree, which PEFT still reports as "unexpected".
            unexpected = [k for k in result.unexpected_keys if config.kind != "prompt"]
            if unexpected:
                raise InvalidRequest(f"the adapter's weights do not fit config {config.kind} (unexpected keys "
                                     f"{unexpected[:3]}); train it from scratch (init=None)")
        yield peft_model
    finally:
        if config.kind != "prompt":  # prompt tuning puts nothing inside the model
            peft_model.base_model.unload()
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in vars(model):
                delattr(model, attr)
        for name, p in model.named_parameters():
            p.requires_grad_(grad_flags[name])
            p.grad = None
        model.train(was_training)


# ---------------------------------------------------------------------------------- batches


def _batches(rows: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device,
             order: Sequence[int]) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches in ``order``: input_ids, attention_mask, labels (IGNORE on padding)."""
    for start in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[start:start + batch_size]]
        width = max(len(r.input_ids) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (b, t)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)  # (b, t)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)  # (b, t)
        for row, r in enumerate(chunk):
            n = len(r.input_ids)
            ids[row, :n] = torch.tensor(r.input_ids)
            labels[row, :n] = torch.tensor(r.labels)
            mask[row, :n] = 1
        yield {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _target_loss(model: "PreTrainedModel", peft_model: Any, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Mean NLL over the batch's target tokens, with the LM head run on the target positions only.

    The vocabulary is large and the targets are a fraction of the tokens, so skipping the head elsewhere saves
    about a fifth of a step. LoRA and IA3 live inside ``model``'s modules, so its decoder runs with them;
    prompt tuning (virtual tokens PEFT prepends) and heads that do more than a projection (soft-capping,
    scaling) take PEFT's own forward.
    """
    config = model.config
    head = model.get_output_embeddings()
    if kind == "prompt" or head is None or getattr(config, "final_logit_softcapping", None) \
            or getattr(config, "logit_scale", None):
        return peft_model(**batch).loss
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]  # (b, t-1): position i predicts token i+1
    scored = labels != IGNORE
    logits = head(hidden[:, :-1][scored])  # (targets, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), labels[scored])


def _pad_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA only; a no-op context elsewhere (fp32 is faster on CPU here)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _encode_all(tokenizer: "PreTrainedTokenizerBase", examples: Sequence[TrainExample],
                max_tokens: int) -> list[Encoded]:
    rows = [encode(tokenizer, e, max_tokens) for e in examples]
    return [r for r in rows if any(label != IGNORE for label in r.labels)]


# ---------------------------------------------------------------------------------- the entry point


def _check_init(init: TrainedAdapter | None, config: AdapterTrainConfig, base_model_id: str) -> TrainedAdapter | None:
    if init is None:
        return None
    if not isinstance(init, TrainedAdapter):
        raise InvalidRequest(f"init must be a TrainedAdapter (the user's current version), got {type(init).__name__}")
    if init.base_model_id != base_model_id:
        log.info("the previous adapter was made for base %r, not %r: training from scratch",
                 init.base_model_id, base_model_id)
        return None
    if init.kind != config.kind:
        raise InvalidRequest(f"init is a {init.kind} adapter but the config asks for {config.kind}; refresh with "
                             f"kind={init.kind!r} or train the new kind from scratch (init=None)")
    return init


def _replay_sample(replay: Sequence[TrainExample], n_new: int, config: AdapterTrainConfig) -> list[TrainExample]:
    k = min(len(replay), math.ceil(config.replay_fraction * n_new))
    return random.Random(config.seed).sample(list(replay), k)


def train_adapter(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", examples: Sequence[TrainExample],
                  config: AdapterTrainConfig, *, init: TrainedAdapter | None = None,
                  replay: Sequence[TrainExample] = (), progress: Progress | None = None,
                  base_model_id: str | None = None) -> TrainedAdapter:
    """Train a ``config.kind`` adapter for one user on ``examples`` (plus a replay sample when refreshing).

    ``base_model_id`` (default: :func:`base_model_id_of` the model) is recorded with the adapter and decides
    whether ``init`` may be continued. ``progress(step, total, loss)`` is called after every optimizer step.
    The model is left exactly as it was given (see the module docstring).
    """
    if not isinstance(config, AdapterTrainConfig):
        raise InvalidRequest(f"config must be an AdapterTrainConfig, got {type(config).__name__}")
    if not examples:
        raise InvalidRequest("no training examples: a user needs at least one own turn, rated reply or fact")
    base_model_id = base_model_id or base_model_id_of(model)
    stale = isinstance(init, TrainedAdapter) and init.base_model_id != base_model_id
    init = _check_init(init, config, base_model_id)
    # A re-train on a new base learns the whole history again; a refresh replays a sample of the old.
    replayed = list(replay) if stale else _replay_sample(replay, len(examples), config)
    rows = _encode_all(tokenizer, [*examples, *replayed], config.max_tokens)
    if not rows:
        raise InvalidRequest("every example lost its target when cut to max_tokens; raise max_tokens")
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = steps_per_epoch * config.epochs
    losses: list[float] = []
    t0 = time.perf_counter()
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):  # seeded LoRA init and dropout, caller's RNG untouched
        torch.manual_seed(config.seed)
        with attached(model, config, tokenizer, state=init.state if init else None) as peft_model:
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
            peft_model.train()
            order_rng = random.Random(config.seed)
            for _epoch in range(config.epochs):
                order = list(range(len(rows)))
                order_rng.shuffle(order)
                for batch in _batches(rows, config.batch_size, _pad_id(tokenizer), device, order):
                    with _autocast(device):
                        loss = _target_loss(model, peft_model, batch, config.kind)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
                    if progress is not None:
                        progress(len(losses), total, losses[-1])
            from peft import get_peft_model_state_dict

            state = {k: v.detach().to("cpu", torch.float32).clone()
                     for k, v in get_peft_model_state_dict(peft_model, adapter_name=ADAPTER_NAME).items()}
            peft_config = peft_model.peft_config[ADAPTER_NAME].to_dict()
    seconds = time.perf_counter() - t0
    log.info("trained a %s adapter on %d examples (%d replayed) in %d steps, %.1f s; loss %.3f → %.3f",
             config.kind, len(examples), len(replayed), total, seconds, losses[0], losses[-1])
    return TrainedAdapter(config, peft_config, state, base_model_id, tuple(losses), seconds,
                          len(examples), len(replayed), continued=init is not None)


@torch.no_grad()
def example_loss(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", examples: Sequence[TrainExample],
                 adapter: TrainedAdapter | None = None, *, max_tokens: int = 256, batch_size: int = 8) -> float:
    """Mean NLL per target token of ``examples`` under the base model, or with ``adapter`` attached.

    ``exp`` of it is the perplexity of the targets. The model is left as it was given.
    """
    rows = _encode_all(tokenizer, examples, max_tokens)
    if not rows:
        raise InvalidRequest("no example has a target token to score")
    device = next(model.parameters()).device
    if adapter is None:
        return _mean_nll(model, rows, batch_size, _pad_id(tokenizer), device)
    with attached(model, adapter.config, tokenizer, state=adapter.state) as peft_model:
        peft_model.eval()
        return _mean_nll(peft_model, rows, batch_size, _pad_id(tokenizer), device)


def _mean_nll(model: Any, rows: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in _batches(rows, batch_size, pad_id, device, range(len(rows))):
            with _autocast(device):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            n_virtual = logits.shape[1] - batch["labels"].shape[1]  # prompt tuning prepends virtual tokens
            logits = logits[:, n_virtual:-1].float()  # (b, t-1, vocab): position i predicts token i+1
            labels = batch["labels"][:, 1:]  # (b, t-1)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                    reduction="sum")
            total += float(nll)
            count += int((labels != IGNORE).sum())
    finally:
        model.train(was_training)
    return total / count
