"""Fusing ranked candidate lists from several retrieval channels into one score per id.

* :func:`rrf` — reciprocal-rank fusion (ranks only); :func:`normalized_rrf` scales it to ``[0, 1]``.
* :func:`zscore_fusion` — each channel's scores standardized over its own candidate list, so a channel
  counts by how far its hits stand out for this query (see ``RetrievalWeights`` in
  :mod:`memory.retrieval` for the measurements behind the choice).

Pure functions over ``(id, score)`` lists; no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from memory.errors import InvalidInput

__all__ = ["Channel", "normalized_rrf", "rrf", "zscore_fusion"]

Channel = Sequence[tuple[str, float]]  # (id, the channel's own score), best first


def rrf(rankings: Sequence[Sequence[str]], *, k: int = 60, weights: Sequence[float] | None = None) -> dict[str, float]:
    """Reciprocal-rank fusion: ``score(d) = Σ_i weights[i] / (k + rank_i(d))``, ranks 1-based.

    An id absent from a ranking gets nothing from it; an id repeated within one ranking counts at its
    best rank only. Returns ids → scores (unsorted; sort by value for the fused order).
    """
    if k < 1:
        raise InvalidInput(f"rrf k must be >= 1, got {k}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise InvalidInput(f"rrf got {len(rankings)} rankings but {len(weights)} weights; give one weight per ranking")
    fused: dict[str, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights):
        seen: set[str] = set()
        for rank, item in enumerate(ranking, start=1):
            if item not in seen:
                seen.add(item)
                fused[item] += weight / (k + rank)
    return dict(fused)


def zscore_fusion(
    scored: Mapping[str, Channel],
    weights: Mapping[str, float],
    *,
    floors: Mapping[str, float] | None = None,
    ranked: Mapping[str, Sequence[str]] | None = None,
    rank_z: float = 3.0,
    k: int = 10,
) -> dict[str, float]:
    """Fuse channels by standardized scores → every candidate id → ``[0, 1]``, the best at 1 (if any > 0).

    A scored channel's hit adds ``weight · max(0, (s - mean) / std)``, mean and std over that channel's
    candidate list: a dense hit far above the other candidates counts more than the top of a flat list,
    whatever the raw cosine scale of the corpus. A hit scoring below ``floors[channel]`` still counts in
    the statistics but adds nothing. A channel without scores (``ranked``) adds
    ``weight · rank_z · (k + 1) / (k + rank)``: its first hit counts as a hit ``rank_z`` deviations up.
    A list of one hit, or of equal scores, has no spread: its hits add nothing.
    """
    fused: dict[str, float] = defaultdict(float)
    for name, hits in scored.items():
        weight, floor = weights.get(name, 0.0), (floors or {}).get(name, float("-inf"))
        if weight <= 0.0 or not hits:
            continue
        values = np.array([score for _, score in hits], dtype=np.float64)  # (n_hits,)
        mean, std = float(values.mean()), float(values.std())
        for item, score in dict(reversed(hits)).items():  # repeats: the best (first) score wins
            fused[item] += weight * (score - mean) / std if std > 1e-9 and score >= floor and score > mean else 0.0
    for name, ids in (ranked or {}).items():
        weight = weights.get(name, 0.0)
        for rank, item in enumerate(dict.fromkeys(ids), start=1):
            if weight > 0.0:
                fused[item] += weight * rank_z * (k + 1) / (k + rank)
    best = max(fused.values(), default=0.0)
    return {item: value / best for item, value in fused.items()} if best > 0.0 else dict(fused)


def normalized_rrf(channels: Mapping[str, Sequence[str]], weights: Mapping[str, float], k: int) -> dict[str, float]:
    """RRF over named channels, divided by the best possible score so the result is in ``[0, 1]``."""
    names = [n for n in channels if weights.get(n, 0.0) > 0.0]
    if not names:
        return {}
    fused = rrf([channels[n] for n in names], k=k, weights=[weights[n] for n in names])
    best = sum(weights[n] for n in names) / (k + 1)
    return {item: score / best for item, score in fused.items()}
