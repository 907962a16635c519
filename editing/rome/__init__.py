"""ROME (Meng et al., 2022): locate-and-edit one fact as a rank-one update of one MLP matrix.

One file per step of the paper: :mod:`~editing.rome.hparams`, :mod:`~editing.rome.compute_u` (k*, u),
:mod:`~editing.rome.compute_v` (v*), :mod:`~editing.rome.rome_main` (the update, as a delta).
"""

from editing.rome.hparams import ROMEHyperParams, ValueHyperParams
from editing.rome.prompts import with_fixed_prefixes
from editing.rome.rome_main import compute_rome

__all__ = ["ROMEHyperParams", "ValueHyperParams", "compute_rome", "with_fixed_prefixes"]
