"""FT-L (Zhu et al., 2020; the constrained fine-tuning baseline of ROME): fine-tune a few MLP matrices on
the fact, with the change held small — here a low-rank delta on ``down_proj`` trained on the user's chat
questions and answers, with a norm clamp and a KL term that keeps other answers where they were.

One file per step: :mod:`~editing.ft_l.hparams`, :mod:`~editing.ft_l.pairs` (the rendered chat Q/A and the
anchor prompts), :mod:`~editing.ft_l.ft_l_main` (the optimisation, returning deltas).
"""

from editing.ft_l.ft_l_main import compute_ft_l
from editing.ft_l.hparams import FTLHyperParams

__all__ = ["FTLHyperParams", "compute_ft_l"]
