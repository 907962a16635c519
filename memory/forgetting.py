"""Forgetting: how strongly a memory is still held, the Ebbinghaus way round.

MemoryBank models retention as ``R = exp(-t / S)``: ``t`` the time since the memory was last
recalled (or made), ``S`` its *stability*. Recalling a memory must make it **more** stable, so ``S``
grows with the recall count and the same elapsed time then costs less retention. (MemoryBank's code
had it inverted: its "strength" shrank the exponent's denominator on recall.)

Stability growth. Spaced-repetition schedules (SM-2, Pimsleur) lengthen the interval geometrically
with each *spaced* review. Retrieval recalls are not spaced — one session can recall the same turn
five times in five minutes — and doubling per recall would make such a burst immortal (2^10 ≈ 1000×
the base). We therefore grow stability polynomially::

    half_life(n) = base_half_life · (1 + n) ** 1.5        n = recall_count

so 1 recall → 2.8×, 3 → 8×, 10 → 36× the base half-life: super-linear like a review schedule,
bounded enough that a burst of recalls cannot pin a memory forever. ``base_half_life_days`` is a true
half-life: ``retention == 0.5`` after exactly that long without recall.

Invariants (tested with hypothesis): retention is in ``(0, 1]``; it is 1 at ``now == last_recalled``;
it never increases as time passes; more recalls never lower it at the same elapsed time.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime

from memory.clock import to_utc
from memory.errors import InvalidInput

__all__ = ["STABILITY_EXPONENT", "stability_days", "retention", "strength"]

STABILITY_EXPONENT = 1.5  # half-life multiplier is (1 + recall_count) ** this
_IMPORTANCE_FLOOR = 0.25  # an unimportant memory keeps this share of its retention as strength
_SECONDS_PER_DAY = 86_400.0


def stability_days(base_half_life_days: float, recall_count: int) -> float:
    """Stability ``S`` (days) of a memory recalled ``recall_count`` times.

    ``S = base_half_life_days · (1 + recall_count)^1.5 / ln 2`` so that ``exp(-t/S)`` halves after the
    (grown) half-life. Strictly increasing in ``recall_count``.
    """
    if not (isinstance(base_half_life_days, (int, float)) and base_half_life_days > 0 and math.isfinite(base_half_life_days)):
        raise InvalidInput(f"base_half_life_days must be a finite number > 0, got {base_half_life_days!r}")
    if isinstance(recall_count, bool) or not isinstance(recall_count, int) or recall_count < 0:
        raise InvalidInput(f"recall_count must be an int >= 0, got {recall_count!r}")
    half_life = float(base_half_life_days) * (1.0 + recall_count) ** STABILITY_EXPONENT
    return half_life / math.log(2.0)


def retention(now: datetime, last_recalled: datetime, stability_days: float) -> float:
    """``R = exp(-t / S)`` with ``t`` the days from ``last_recalled`` to ``now``; in ``(0, 1]``.

    A ``last_recalled`` after ``now`` (an event dated in the future) counts as just recalled: 1.0.
    Very old memories bottom out at the smallest positive float rather than 0, so their order by
    importance is still defined.
    """
    if not (isinstance(stability_days, (int, float)) and stability_days > 0 and math.isfinite(stability_days)):
        raise InvalidInput(f"stability_days must be a finite number > 0, got {stability_days!r}")
    if not isinstance(now, datetime) or not isinstance(last_recalled, datetime):
        raise InvalidInput("now and last_recalled must be datetimes (naive ones are taken as UTC)")
    elapsed_days = (to_utc(now) - to_utc(last_recalled)).total_seconds() / _SECONDS_PER_DAY
    if elapsed_days <= 0.0:
        return 1.0
    return max(math.exp(-elapsed_days / stability_days), sys.float_info.min)


def strength(importance: float, retention: float) -> float:
    """How strongly a memory is held, in ``[0, 1]``: retention weighted by importance.

    ``retention · (0.25 + 0.75 · importance)`` — increasing in both; an importance-0 memory still
    decays and orders by recency (the 0.25 floor) instead of collapsing to a tie at 0.
    """
    for name, value in (("importance", importance), ("retention", retention)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise InvalidInput(f"{name} must be a number within [0, 1], got {value!r}")
    return float(retention) * (_IMPORTANCE_FLOOR + (1.0 - _IMPORTANCE_FLOOR) * float(importance))
