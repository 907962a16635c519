"""Statistical drift of a user's writing style: stream detectors over per-message statistics.

Explicit drift ("keep it short from now on") comes from the knowledge graph as ``PreferenceDrift``.
This module watches what users *do*: per message it computes two statistics and feeds each to its own
``river`` detector (ADWIN by default; any ``river.base.DriftDetector`` factory can be injected):

* ``length``    — ``log1p(number of words)``: the log makes the scale comparable across users (a shift
                   from 60 words to 2 and one from 6 to 0 both read as large) and tames long-tail messages;
* ``formality`` — in [-1, 1]: (formal markers − informal markers) / (markers + 1), where formal markers
                   are polite forms and uncontracted auxiliaries, informal ones contractions, slang and
                   emoticons.

A detection yields ``StyleDrift(user_id, statistic, score)`` with ``score`` = the detector's estimate of
the statistic's mean after the change minus before (signed: negative = shorter / more casual).
State lives in memory per user (a lock guards it); :meth:`DriftMonitor.reset` drops a user's state.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from memory.clock import Clock
from memory.errors import InvalidInput
from memory.records import StyleDrift

__all__ = ["DriftMonitor", "STATISTICS", "formality_score", "length_score"]

_WORD = re.compile(r"[\w']+")
_INFORMAL = re.compile(
    r"\b(?:\w+(?:'m|'re|'s|n't|'ll|'ve|'d)|lol|lmao|rofl|gonna|wanna|gotta|kinda|sorta|ya|u|ur|yeah|yep|nope|hey|"
    r"dude|btw|omg|thx|pls|plz|cool|awesome|haha+|ok|okay)\b|!{2,}|[:;]-?[)(DP]", re.IGNORECASE)
_FORMAL = re.compile(
    r"\b(?:please|thank you|thanks|would you|could you|kindly|regards|sincerely|dear|i am|i would|i have|"
    r"do not|does not|cannot|will not|it is|that is|however|therefore|furthermore|appreciate|grateful)\b",
    re.IGNORECASE)


def length_score(text: str) -> float:
    """``log1p`` of the number of words."""
    return math.log1p(len(_WORD.findall(text)))


def formality_score(text: str) -> float:
    """In [-1, 1]: positive for polite, uncontracted writing; negative for contractions and slang."""
    formal, informal = len(_FORMAL.findall(text)), len(_INFORMAL.findall(text))
    return (formal - informal) / (formal + informal + 1)


STATISTICS: dict[str, Callable[[str], float]] = {"length": length_score, "formality": formality_score}


def _adwin() -> Any:
    from river import drift

    return drift.ADWIN()


@dataclass
class _UserState:
    detectors: dict[str, Any]
    last_seen: datetime
    observed: int = 0
    drifts: list[StyleDrift] = field(default_factory=list)


class DriftMonitor:
    """Per-user, per-statistic stream detectors over the user's own messages (thread-safe)."""

    def __init__(self, clock: Clock, *, detector_factory: Callable[[], Any] = _adwin) -> None:
        self._clock = clock
        self._factory = detector_factory
        self._lock = threading.Lock()
        self._users: dict[str, _UserState] = {}

    def observe(self, user_id: str, text: str) -> list[StyleDrift]:
        """Feed one user message; returns a ``StyleDrift`` for each statistic whose detector fired."""
        if not isinstance(user_id, str) or not user_id.strip():
            raise InvalidInput(f"user_id must be a non-empty string, got {user_id!r}")
        if not isinstance(text, str):
            raise InvalidInput(f"text must be a str, got {type(text).__name__}")
        values = {name: stat(text) for name, stat in STATISTICS.items()}
        with self._lock:
            state = self._users.get(user_id)
            if state is None:
                state = _UserState({name: self._factory() for name in STATISTICS}, self._clock.now())
                self._users[user_id] = state
            state.last_seen = self._clock.now()
            state.observed += 1
            found = []
            for name, value in values.items():
                detector = state.detectors[name]
                before = float(detector.estimation) if hasattr(detector, "estimation") else 0.0
                detector.update(value)
                if detector.drift_detected:
                    after = float(detector.estimation) if hasattr(detector, "estimation") else value
                    found.append(StyleDrift(user_id=user_id, statistic=name, score=after - before))
            state.drifts.extend(found)
            return found

    def drifts(self, user_id: str) -> list[StyleDrift]:
        """Every drift seen for the user since the state was created (oldest first)."""
        with self._lock:
            state = self._users.get(user_id)
            return list(state.drifts) if state else []

    def reset(self, user_id: str) -> None:
        """Forget the user's detector state (e.g. after their adapter was refreshed, or on forget())."""
        with self._lock:
            self._users.pop(user_id, None)

    def prune(self, idle_for: timedelta) -> int:
        """Drop the state of users not seen for ``idle_for`` (bounds memory); returns how many were dropped."""
        cutoff = self._clock.now() - idle_for
        with self._lock:
            stale = [u for u, s in self._users.items() if s.last_seen < cutoff]
            for user_id in stale:
                del self._users[user_id]
            return len(stale)
