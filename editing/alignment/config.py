"""How pole adapters are built and trained (one dataclass; the defaults are what ``pllm align train`` uses)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from editing.errors import InvalidRequest

__all__ = ["PoleTrainConfig"]


@dataclass(frozen=True)
class PoleTrainConfig:
    """Preference pairs (context distillation from the base model) and DPO with a LoRA per pole.

    Measured on SmolLM2-135M (CPU, 2 threads): a DPO step on 4 pairs of ≤ 256 tokens ≈ 6 s; 12 steps on 16
    verbosity pairs took the concise pole's replies from 138 to 16 tokens on questions it was not trained on.
    """

    # Pairs
    max_new_tokens: int = 160  # per generated answer
    repetition_penalty: float = 1.1
    gen_batch_size: int = 8
    n_prompts: int | None = None  # the first N built-in prompts (None: all)
    # LoRA
    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")
    # DPO
    beta: float = 0.1
    lr: float = 2e-4
    steps: int = 12
    batch_size: int = 4
    max_length: int = 256  # prompt + answer tokens per pair
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "gen_batch_size", "r", "steps", "batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"PoleTrainConfig.{name} must be an integer >= 1, got {value!r}")
        if self.n_prompts is not None and (not isinstance(self.n_prompts, int) or self.n_prompts < 2):
            raise InvalidRequest(f"PoleTrainConfig.n_prompts must be None or an integer >= 2, got {self.n_prompts!r}")
        if not self.beta > 0 or not self.lr > 0 or not self.alpha > 0:
            raise InvalidRequest(f"beta, lr and alpha must be > 0, got {self.beta}, {self.lr}, {self.alpha}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise InvalidRequest(f"target_modules must name at least one module, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PoleTrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k == "target_modules" else v for k, v in data.items() if k in known})
