"""The objective level: per-user style weights realised on the model by DPO-trained pole adapters.

One file per step: :mod:`~editing.alignment.poles` (dimensions, poles, their instructions, weights → pole mix),
:mod:`~editing.alignment.prompts` (the built-in training questions), :mod:`~editing.alignment.pairs` (preference
pairs from the base model by context distillation), :mod:`~editing.alignment.train` (DPO with a LoRA per pole,
TRL + PEFT), :mod:`~editing.alignment.store` (poles on disk per base model), :mod:`~editing.alignment.merge` (a
user's poles combined by weight: PEFT ``add_weighted_adapter``, ``cat`` or ``svd``) and
:mod:`~editing.alignment.mod` (the alternative: MOD logit fusion at decoding time), :mod:`~editing.alignment.build`
(the whole training run, as ``pllm align train`` runs it). Importing this package does no I/O; TRL and PEFT are
imported when a pole is trained or merged.
"""

from editing.alignment.build import TrainRun, train_poles
from editing.alignment.config import PoleTrainConfig
from editing.alignment.merge import merge_poles, pole_from_key
from editing.alignment.mod import PoleFusion, fused_decode, fused_stream, pole_deltas
from editing.alignment.pairs import DimensionAnswers, PreferencePair, dimension_answers, pairs_for
from editing.alignment.poles import DIMENSIONS, INSTRUCTIONS, MILD_INSTRUCTIONS, Pole, all_poles, instruction_for, pole_mix, pole_of
from editing.alignment.prompts import TRAIN_PROMPTS
from editing.alignment.store import PoleStore
from editing.alignment.train import PoleAdapter, train_pole

__all__ = [
    "DIMENSIONS",
    "INSTRUCTIONS",
    "MILD_INSTRUCTIONS",
    "TRAIN_PROMPTS",
    "DimensionAnswers",
    "Pole",
    "PoleAdapter",
    "PoleFusion",
    "PoleStore",
    "PoleTrainConfig",
    "PreferencePair",
    "TrainRun",
    "all_poles",
    "dimension_answers",
    "fused_decode",
    "fused_stream",
    "instruction_for",
    "merge_poles",
    "pairs_for",
    "pole_deltas",
    "pole_from_key",
    "pole_mix",
    "pole_of",
    "train_poles",
    "train_pole",
]
