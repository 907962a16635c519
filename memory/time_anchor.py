"""Time expressions in a question → the period of the user's life it points at.

"the museum I mentioned two months ago", "what did I say last spring", "on May 3": :func:`time_window`
reads the first such expression against the question's date (its *reference*) and returns a half-open
UTC window ``[start, end)``; retrieval then favours the turns of that period (see :mod:`memory.ranking`).

Understood, case-insensitive (numbers as digits or words up to twenty, "a", "a couple of", "a few",
"several"):

* ``today``, ``yesterday`` / ``last night``, ``the day before yesterday``;
* ``N days|weeks|months|years ago``: the day/week/month/year N units back, widened by half a unit each
  side (people round: "two months ago" is said of anything six to ten weeks back); ``a few`` / ``several``
  cover two to five units back;
* ``last|this|earlier this week|month|year``: calendar periods (weeks start on Monday);
* ``last|this spring|summer|autumn|fall|winter``: meteorological seasons of the northern hemisphere
  (spring = March-May, winter = December-February); ``last summer`` is the latest summer that has ended;
* ``in|last March`` (optionally with a year): the latest March that has begun; ``on May 3``, ``May 3rd``,
  ``3 May``, ``on May 3, 2024``: that day (the latest one not after the reference when no year is given);
* ``in 2023``: that year; ``last Monday`` / ``on Tuesday``: the latest such weekday before the reference.

No I/O, no third-party parser: a handful of regular expressions, tested against a fixed reference date.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from memory.clock import to_utc
from memory.errors import InvalidInput

__all__ = ["TimeWindow", "time_window"]


@dataclass(frozen=True)
class TimeWindow:
    """A half-open UTC period ``[start, end)`` and the words of the question that named it."""

    start: datetime
    end: datetime
    phrase: str

    def __contains__(self, when: datetime) -> bool:
        when = to_utc(when)
        return self.start <= when < self.end

    def distance(self, when: datetime) -> timedelta:
        """How far ``when`` lies outside the window (zero inside)."""
        when = to_utc(when)
        if when < self.start:
            return self.start - when
        return when - self.end + timedelta(microseconds=1) if when >= self.end else timedelta(0)

    @property
    def width(self) -> timedelta:
        return self.end - self.start


_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())} | {"a": 1, "an": 1, "a couple of": 2, "couple of": 2}
_VAGUE = ("a few", "few", "several")
_MONTHS = {m: i + 1 for i, m in enumerate(
    "january february march april may june july august september october november december".split())}
_MONTHS |= {m[:3]: i for m, i in list(_MONTHS.items())} | {"sept": 9}
_WEEKDAYS = {d: i for i, d in enumerate("monday tuesday wednesday thursday friday saturday sunday".split())}
_SEASONS = {"spring": 3, "summer": 6, "autumn": 9, "fall": 9, "winter": 12}  # first month of each
_UNITS = {"day": 1, "week": 7, "month": 0, "year": 0}  # months and years move on the calendar

_NUM = "|".join(sorted((re.escape(k) for k in _NUMBERS), key=len, reverse=True))
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_AGO = re.compile(rf"\b(?P<n>\d{{1,3}}|{_NUM}|{'|'.join(_VAGUE)})\s+(?P<unit>day|week|month|year)s?\s+ago\b")
_PERIOD = re.compile(r"\b(?P<which>last|past|previous|this|earlier this)\s+(?P<unit>week|month|year)\b")
_SEASON = re.compile(rf"\b(?P<which>last|this|in the|in)\s+(?P<season>{'|'.join(_SEASONS)})\b(?:\s+(?P<year>\d{{4}}))?")
_DAY_MONTH = re.compile(rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?\s+(?P<month>{_MONTH})\b\.?(?:,?\s+(?P<year>\d{{4}}))?")
_MONTH_DAY = re.compile(rf"\b(?P<month>{_MONTH})\.?\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<year>\d{{4}}))?")
_IN_MONTH = re.compile(rf"\b(?:in|last|during|back in)\s+(?P<month>{_MONTH})\b(?:\s+(?P<year>\d{{4}}))?")
_IN_YEAR = re.compile(r"\b(?:in|during|back in)\s+(?P<year>(?:19|20)\d{2})\b")
_WEEKDAY = re.compile(rf"\b(?:last|on|this past)\s+(?P<day>{'|'.join(_WEEKDAYS)})\b")
_DAYS = re.compile(r"\b(?P<word>the day before yesterday|yesterday|last night|today|this morning|tonight)\b")


def _day(when: datetime) -> datetime:
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def _month_start(year: int, month: int) -> datetime:
    """First instant of ``month`` of ``year`` (month may run past 1..12: it carries into the year)."""
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=timezone.utc)


def _ago(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    unit, raw = m["unit"], m["n"]
    low, high = (2.0, 5.0) if raw in _VAGUE else (float(raw) if raw.isdigit() else float(_NUMBERS[raw]),) * 2
    if unit in ("day", "week"):
        days = _UNITS[unit]
        start = _day(ref) - timedelta(days=high * days + days / 2)
        return start, _day(ref) - timedelta(days=low * days - days / 2) + timedelta(days=1)
    months = 12 if unit == "year" else 1
    # ``ref`` shifted back by n months, ± half a month (15 days; 6 months for years)
    half = timedelta(days=15 * months)
    back = lambda n: ref - timedelta(days=30.44 * months * n)  # noqa: E731 - calendar-exact is false precision here
    return back(high) - half, back(low) + half


def _period(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    unit, which = m["unit"], m["which"]
    if unit == "week":
        start = _day(ref) - timedelta(days=ref.weekday())
        this = (start, start + timedelta(days=7))
        last = (start - timedelta(days=7), start)
    elif unit == "month":
        this = (_month_start(ref.year, ref.month), _month_start(ref.year, ref.month + 1))
        last = (_month_start(ref.year, ref.month - 1), this[0])
    else:
        this = (_month_start(ref.year, 1), _month_start(ref.year + 1, 1))
        last = (_month_start(ref.year - 1, 1), this[0])
    if which.startswith("earlier"):
        return this[0], ref
    return this if which == "this" else last


def _season(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    first = _SEASONS[m["season"]]
    if m["year"]:  # "summer 2023"; winter 2023 = Dec 2023 - Feb 2024
        start = _month_start(int(m["year"]), first)
        return start, _month_start(int(m["year"]), first + 3)
    # the latest start of that season not after the reference ...
    year = ref.year if _month_start(ref.year, first) <= ref else ref.year - 1
    start = _month_start(year, first)
    end = _month_start(year, first + 3)
    if m["which"] == "last" and end > ref:  # ... which, for "last", must already be over
        start, end = _month_start(year - 1, first), _month_start(year - 1, first + 3)
    return start, end


def _in_month(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    month = _MONTHS[m["month"]]
    if m["year"]:
        year = int(m["year"])
    else:
        year = ref.year if _month_start(ref.year, month) <= ref else ref.year - 1
        if m[0].startswith("last") and year == ref.year and ref.month == month:
            year -= 1
    return _month_start(year, month), _month_start(year, month + 1)


def _on_day(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    month, day = _MONTHS[m["month"]], int(m["day"])
    years = [int(m["year"])] if m["year"] else [ref.year, ref.year - 1]
    for year in years:
        try:
            start = datetime(year, month, day, tzinfo=ref.tzinfo)
        except ValueError as exc:
            raise InvalidInput(f"{m[0]!r} is not a date: {exc}") from exc
        if m["year"] or start <= ref:
            return start, start + timedelta(days=1)
    return start, start + timedelta(days=1)


def _in_year(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    year = int(m["year"])
    return _month_start(year, 1), _month_start(year + 1, 1)


def _weekday(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    back = (ref.weekday() - _WEEKDAYS[m["day"]]) % 7 or 7
    start = _day(ref) - timedelta(days=back)
    return start, start + timedelta(days=1)


def _days(m: re.Match[str], ref: datetime) -> tuple[datetime, datetime]:
    back = {"the day before yesterday": 2, "yesterday": 1, "last night": 1}.get(m["word"], 0)
    start = _day(ref) - timedelta(days=back)
    return start, start + timedelta(days=1)


# Most specific first: "on May 3, 2024" before "in 2024"; "two weeks ago" before "last week".
_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str], datetime], tuple[datetime, datetime]]], ...] = (
    (_DAY_MONTH, _on_day), (_MONTH_DAY, _on_day), (_AGO, _ago), (_DAYS, _days), (_WEEKDAY, _weekday),
    (_SEASON, _season), (_PERIOD, _period), (_IN_MONTH, _in_month), (_IN_YEAR, _in_year),
)


def time_window(text: str, reference: datetime) -> TimeWindow | None:
    """The period the first time expression of ``text`` names, read against ``reference`` (the
    question's date), or None when it names none. Raises ``InvalidInput`` for an impossible date
    ("on February 30")."""
    if not isinstance(text, str):
        raise InvalidInput(f"text must be a string, got {type(text).__name__}")
    if not isinstance(reference, datetime):
        raise InvalidInput(f"reference must be a datetime, got {type(reference).__name__}")
    ref, folded = to_utc(reference), text.casefold()
    for pattern, read in _RULES:
        m = pattern.search(folded)
        if m is None or (pattern is _MONTH_DAY and m["month"] == "may" and not _may_is_month(folded, m)):
            continue
        start, end = read(m, ref)
        return TimeWindow(start, end, text[m.start():m.end()])
    return None


def _may_is_month(folded: str, m: re.Match[str]) -> bool:
    """"may 3" is a date; "I may 3D-print it" is not: a month name "may" needs a preposition before it."""
    return bool(re.search(r"(?:\bon|\bin|\bof|\bsince|\buntil|,)\s*$", folded[: m.start()])) or m.start() == 0
