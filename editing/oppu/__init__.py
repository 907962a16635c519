"""Per-user adapters trained from the user's own history (OPPU: "One PEFT Per User"): LoRA, IA3, prompt tuning.

One file per step: :mod:`~editing.oppu.config` (the hyper-parameters), :mod:`~editing.oppu.data` (chat-form
examples from a user's turns, rated replies and current facts), :mod:`~editing.oppu.train` (one training entry
point for the three kinds, refresh from the previous version), :mod:`~editing.oppu.io` (PEFT folders with the
base-model id recorded), :mod:`~editing.oppu.anchors` (general questions with the base model's own answers, so
an adapter leaves general answers as they were). Importing this package does no I/O; PEFT is imported when an adapter is trained.
"""

from editing.oppu.anchors import ANCHOR_QUESTIONS, anchor_examples
from editing.oppu.config import KINDS, REFRESH_CONTEXT_TURNS, AdapterTrainConfig, refresh_config
from editing.oppu.data import TrainExample, build_examples, encode, fact_examples, own_turn_examples, rated_reply_examples
from editing.oppu.io import load_adapter, save_adapter
from editing.oppu.train import TrainedAdapter, attached, example_loss, train_adapter

__all__ = [
    "ANCHOR_QUESTIONS",
    "KINDS",
    "REFRESH_CONTEXT_TURNS",
    "AdapterTrainConfig",
    "TrainExample",
    "TrainedAdapter",
    "anchor_examples",
    "attached",
    "build_examples",
    "encode",
    "example_loss",
    "fact_examples",
    "load_adapter",
    "own_turn_examples",
    "rated_reply_examples",
    "refresh_config",
    "save_adapter",
    "train_adapter",
]
