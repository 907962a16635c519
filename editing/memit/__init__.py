"""MEMIT (Meng et al., 2023): many facts at once, each spread over several MLP layers by least squares.

Reuses ROME's steps (:func:`editing.rome.compute_v.compute_v`, :func:`editing.rome.compute_u.compute_key`);
adds only :mod:`~editing.memit.hparams` and the multi-layer update in :mod:`~editing.memit.memit_main`.
"""

from editing.memit.hparams import MEMITHyperParams
from editing.memit.memit_main import compute_memit

__all__ = ["MEMITHyperParams", "compute_memit"]
