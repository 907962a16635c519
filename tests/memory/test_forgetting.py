"""Retention must behave like memory: it fades with time and recalls make it last longer."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory.clock import utc
from memory.errors import InvalidInput
from memory.forgetting import retention, stability_days, strength

T0 = utc(2024, 1, 1)
days = st.floats(min_value=0.0, max_value=3650.0, allow_nan=False)
recalls = st.integers(min_value=0, max_value=50)
half_lives = st.floats(min_value=0.1, max_value=365.0)


@given(half_lives, recalls)
def test_retention_is_one_right_after_recall(base: float, n: int) -> None:
    assert retention(T0, T0, stability_days(base, n)) == 1.0


@given(half_lives, recalls, days, days)
def test_retention_fades_with_elapsed_time(base: float, n: int, a: float, b: float) -> None:
    s = stability_days(base, n)
    early, late = sorted((a, b))
    r_early = retention(T0 + timedelta(days=early), T0, s)
    r_late = retention(T0 + timedelta(days=late), T0, s)
    assert 0.0 < r_late <= r_early <= 1.0


@given(half_lives, recalls, st.floats(min_value=0.01, max_value=3650.0))
def test_more_recalls_mean_higher_retention(base: float, n: int, elapsed: float) -> None:
    now = T0 + timedelta(days=elapsed)
    assert retention(now, T0, stability_days(base, n + 1)) >= retention(now, T0, stability_days(base, n))
    assert stability_days(base, n + 1) > stability_days(base, n)


def test_base_half_life_is_a_true_half_life_and_recall_extends_it() -> None:
    assert retention(T0 + timedelta(days=30), T0, stability_days(30.0, 0)) == pytest.approx(0.5)
    # One recall: half-life 30 · 2^1.5 ≈ 84.9 days, so after 30 days most of it is still there.
    once = retention(T0 + timedelta(days=30), T0, stability_days(30.0, 1))
    assert once == pytest.approx(math.exp(-math.log(2) / 2**1.5))
    assert once > 0.75


def test_future_event_counts_as_just_recalled() -> None:
    assert retention(T0, T0 + timedelta(days=3), stability_days(30.0, 0)) == 1.0


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_strength_grows_with_importance_and_retention(imp: float, r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    assert 0.0 <= strength(imp, lo) <= strength(imp, hi) <= 1.0
    assert strength(0.0, hi) <= strength(imp, hi) <= strength(1.0, hi)


@pytest.mark.parametrize(
    "call",
    [
        lambda: stability_days(0.0, 0),
        lambda: stability_days(30.0, -1),
        lambda: stability_days(30.0, 1.5),  # type: ignore[arg-type]
        lambda: retention(T0, T0, 0.0),
        lambda: strength(1.5, 0.5),
        lambda: strength(0.5, -0.1),
    ],
)
def test_bad_input_is_rejected_clearly(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        call()
