"""Hyper-parameters of FT-L, validated on construction; the defaults suit SmolLM2-135M-Instruct."""

from __future__ import annotations

from dataclasses import dataclass

from editing.errors import InvalidRequest

__all__ = ["FTLHyperParams", "NEUTRAL_ANCHORS", "PERSONAL_ANCHORS"]

# Questions about the user that an edit of another slot must leave answered as they were — including
# by the user's earlier edits, which are in place (as hooks) while a new edit is computed.
# Few, because every anchor is a row of every training step (CPU time).
PERSONAL_ANCHORS: tuple[str, ...] = ("Where do I live?", "What's my favorite food?", "What pet do I have?")
# General questions held by the KL term. Not editing.chat_prompts.NEUTRAL_CHAT: check_edit measures
# locality on those, so they stay held out.
NEUTRAL_ANCHORS: tuple[str, ...] = ("Tell me a fun fact about the ocean.", "How do I make a cup of tea?")


@dataclass(frozen=True)
class FTLHyperParams:
    """FT-L: a rank-``rank`` delta ``B @ A`` on ``rewrite_module_tmp`` of each of ``layers``."""

    # Method
    layers: tuple[int, ...] = (4, 5, 6)
    rank: int = 4
    num_steps: int = 20  # Adam steps (stops early once the answers are likely)
    lr: float = 2e-2
    stop_nll: float = 0.05  # mean NLL per answer token at which training stops
    # ... or once every chat answer token leads the next-best token by this many nats (greedy chat answers
    # right with room to spare; None: off)
    stop_margin: float | None = None
    max_norm_factor: float = 0.08  # ‖B A‖_F ≤ factor · ‖W‖_F per module (the "constrained" of FT-L)
    kl_factor: float = 1.0  # weight of KL(before ‖ after) over the anchors' reference answers
    anchor_answer_tokens: int = 4  # reference-answer tokens per anchor the KL is taken over
    anchor_questions: tuple[str, ...] = PERSONAL_ANCHORS + NEUTRAL_ANCHORS
    template_null_space: bool = True  # ΔW k = 0 for the keys of the chat template's shared prefix
    include_plain_prompt: bool = True  # also train "prompt.format(subject) target" (plain-text recall)
    preserve_weight: float = 1.0  # on ‖ΔW k_p‖² / ‖W k_p‖² for earlier edits' keys k_p
    seed: int = 0  # the private generator that initialises A
    # Module templates
    rewrite_module_tmp: str = "model.layers.{}.mlp.down_proj"

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "anchor_questions", tuple(self.anchor_questions))
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise InvalidRequest(f"layers must be distinct non-negative layer indices, got {self.layers}")
        if self.rank < 1 or self.num_steps < 1 or self.anchor_answer_tokens < 1:
            raise InvalidRequest(f"rank, num_steps and anchor_answer_tokens must be >= 1, got {self.rank}, "
                                 f"{self.num_steps}, {self.anchor_answer_tokens}")
        if self.lr <= 0 or self.max_norm_factor <= 0:
            raise InvalidRequest(f"lr and max_norm_factor must be > 0, got {self.lr}, {self.max_norm_factor}")
        if min(self.kl_factor, self.preserve_weight, self.stop_nll) < 0:
            raise InvalidRequest("kl_factor, preserve_weight and stop_nll must be >= 0")
        if self.stop_margin is not None and self.stop_margin < 0:
            raise InvalidRequest(f"stop_margin must be >= 0 or None, got {self.stop_margin}")
        if self.rewrite_module_tmp.count("{}") != 1:
            raise InvalidRequest(f"rewrite_module_tmp needs exactly one '{{}}' for the layer, "
                                 f"got {self.rewrite_module_tmp!r}")
