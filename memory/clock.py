"""One injectable notion of "now" for every component.

Scenarios move time forward by hand; everything that stamps a record or decays a strength reads the
clock it was given, never ``datetime.now()`` directly.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "ManualClock", "utc", "to_utc"]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A timezone-aware UTC datetime (a small convenience for tests and scenarios)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


def to_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@runtime_checkable
class Clock(Protocol):
    """Anything with a ``now()`` that returns an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class ManualClock:
    """A clock that only moves when told to (scenarios, tests). Thread-safe.

    Each ``now()`` returns a time strictly after the previous one (by one microsecond) so that records
    written within one frozen instant still sort in the order they were written.
    """

    def __init__(self, start: datetime) -> None:
        self._lock = threading.Lock()
        self._now = to_utc(start)
        self._last: datetime | None = None

    def now(self) -> datetime:
        with self._lock:
            value = self._now
            if self._last is not None and value <= self._last:
                value = self._last + timedelta(microseconds=1)
            self._last = value
            return value

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (it may not go backwards: history would stop making sense).

        Setting the instant the clock already shows is allowed even after reads nudged their results past it
        (a background thread may read the clock at any time); the next read still comes after every earlier one.
        """
        when = to_utc(when)
        with self._lock:
            if when < self._now:
                raise ValueError(f"ManualClock cannot go back in time: {when.isoformat()} < {self._now.isoformat()}")
            self._now = when

    def advance(self, delta: timedelta) -> None:
        """Move forward by ``delta``."""
        with self._lock:
            self._now = self._now + delta
