"""Hyper-parameters of a per-user adapter (OPPU: "One PEFT Per User"), validated on construction.

One dataclass for all three adapter kinds; the fields of the kinds not chosen are ignored. Module targets are
given as PEFT names (``"q_proj"``: that module in every layer) or as templates with ``{}`` for the layer index
(``"model.layers.{}.self_attn.q_proj"``), expanded over ``layers`` — model families differ only there.
Device and dtype are runtime choices (the model's), never part of the config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from editing.errors import InvalidRequest

__all__ = ["KINDS", "AdapterTrainConfig", "REFRESH_CONTEXT_TURNS", "refresh_config"]

KINDS = ("lora", "ia3", "prompt")
# Learning rates that train each kind in a few dozen steps on SmolLM2 (IA3 scales and soft prompts need more).
_DEFAULT_LR = {"lora": 1e-3, "ia3": 3e-2, "prompt": 3e-2}
_DEFAULT_TARGETS = {"lora": ("q_proj", "v_proj"), "ia3": ("k_proj", "v_proj", "down_proj"), "prompt": ()}


@dataclass(frozen=True)
class AdapterTrainConfig:
    """How to train one user's adapter.

    ``lr=None`` takes the kind's default; ``target_modules=None`` the kind's default targets (LoRA: q/v;
    IA3: k/v and the MLP's down projection, which is also its feed-forward module).
    """

    # Method
    kind: str = "lora"  # "lora" | "ia3" | "prompt"
    # Module templates (LoRA, IA3)
    target_modules: tuple[str, ...] | None = None  # names, or templates with "{}" for the layer
    layers: tuple[int, ...] | None = None  # the layers templates expand over (required with templates)
    layers_to_transform: tuple[int, ...] | None = None  # LoRA on these layer indices only (PEFT's option)
    feedforward_modules: tuple[str, ...] = ("down_proj",)  # IA3: scaled on their input, not their output
    # LoRA
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # Prompt tuning
    num_virtual_tokens: int = 16
    prompt_init_text: str = "Continue this conversation the way this person writes."
    # Optimization
    lr: float | None = None
    epochs: int = 2
    batch_size: int = 4
    max_tokens: int = 256  # per example, prompt and target together; the prompt is cut from the left
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Refresh
    replay_fraction: float = 0.5  # replayed old examples per new example (a sample, capped by how many exist)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidRequest(f"adapter kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("r", "num_virtual_tokens", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 8:
            raise InvalidRequest(f"max_tokens must be an integer >= 8, got {self.max_tokens!r}")
        if not self.alpha > 0:
            raise InvalidRequest(f"alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidRequest(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.lr is not None and not (0.0 < self.lr < 1.0):
            raise InvalidRequest(f"lr must be in (0, 1) (or None for the kind's default), got {self.lr!r}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise InvalidRequest(f"weight_decay must be >= 0 and max_grad_norm > 0, got {self.weight_decay!r} "
                                 f"and {self.max_grad_norm!r}")
        if not 0.0 <= self.replay_fraction <= 10.0:
            raise InvalidRequest(f"replay_fraction must be in [0, 10] (old examples per new one), "
                                 f"got {self.replay_fraction!r}")
        self._check_targets()
        if self.layers_to_transform is not None and self.kind != "lora":
            raise InvalidRequest(f"layers_to_transform applies to LoRA only; for {self.kind}, name the modules of "
                                 "the layers you want in target_modules (templates + layers)")
        if self.kind == "prompt" and not self.prompt_init_text.strip():
            raise InvalidRequest("prompt_init_text must be a non-empty string (the soft prompt starts from its "
                                 "token embeddings)")

    def _check_targets(self) -> None:
        for name in ("target_modules", "feedforward_modules", "layers", "layers_to_transform"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise InvalidRequest(f"{name} must be a sequence, not one string: wrap it as ({value!r},)")
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.target_modules is not None:
            if self.kind != "prompt" and not self.target_modules:
                raise InvalidRequest(f"target_modules is empty: a {self.kind} adapter needs at least one module")
            bad = [t for t in self.target_modules if not isinstance(t, str) or not t.strip() or t.count("{}") > 1]
            if bad:
                raise InvalidRequest(f"target_modules entries must be module names or templates with one '{{}}' "
                                     f"for the layer, got {bad}")
            if any("{}" in t for t in self.target_modules) and not self.layers:
                raise InvalidRequest(f"target_modules {self.target_modules} are templates: give layers=(...) "
                                     "to expand them over")
        for name in ("layers", "layers_to_transform"):
            value = getattr(self, name)
            if value is not None and (not value or any(not isinstance(i, int) or isinstance(i, bool) or i < 0
                                                       for i in value)):
                raise InvalidRequest(f"{name} must be a non-empty sequence of layer indices >= 0, got {value!r}")

    # ------------------------------------------------------------------------------ derived values

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else _DEFAULT_LR[self.kind]

    def modules(self) -> list[str]:
        """The PEFT ``target_modules``: names as given, templates expanded over ``layers``."""
        targets = self.target_modules if self.target_modules is not None else _DEFAULT_TARGETS[self.kind]
        out: list[str] = []
        for target in targets:
            out.extend(target.format(i) for i in self.layers or ()) if "{}" in target else out.append(target)
        return out

    def feedforward(self) -> list[str]:
        """IA3's feed-forward modules among the targets (a target module name ending in one of them)."""
        return [m for m in self.modules() if any(m == f or m.endswith("." + f) for f in self.feedforward_modules)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (saved beside the adapter): tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterTrainConfig":
        """The inverse of :meth:`to_dict`; unknown keys are an error (a config from a newer pllm)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(f"unknown adapter config fields {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


REFRESH_CONTEXT_TURNS = 1  # turns before each own turn in a refresh's examples (the one it answers)


def refresh_config(num_layers: int) -> AdapterTrainConfig:
    """The config pllm's worker refreshes a user's style adapter with, on a model of ``num_layers`` layers.

    LoRA (r 8, alpha 16) on q/v of the upper half of the layers, batches of 8 at lr 2e-3, examples of at most
    128 tokens, each own turn after the one turn it answers (:data:`REFRESH_CONTEXT_TURNS`): the backward pass
    stops at the middle of the model and the sequences are short. Measured on SmolLM2, 2-core CPU, 200 turns ×
    2 epochs (``bench/adapter_speed.py``): q/v of every layer, 256 tokens, 4 turns of context: 343 s; this
    config with 2 turns of context: 145 s; with 1: 98 s.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise InvalidRequest(f"num_layers must be an integer >= 1, got {num_layers!r}")
    return AdapterTrainConfig(max_tokens=128, batch_size=8, lr=2e-3,
                              layers_to_transform=tuple(range(num_layers // 2, num_layers)))
