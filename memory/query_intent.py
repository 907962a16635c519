"""What a question asks for, beyond its topic: the present, the past, a period, or the assistant's words.

* ``tense="current"`` — "where do I live?": for a fact that was updated, the newest value is the answer;
* ``tense="past"`` — "where did I live before Denver?", "what did I use to eat?", "my previous job":
  the superseded values are the answer;
* ``window`` — "the museum I mentioned two months ago": a :class:`memory.time_anchor.TimeWindow`;
* ``about_assistant`` — "how many eggs did you say?", "you recommended a book": the answer is in one of
  the assistant's own turns, which retrieval otherwise ranks below the user's.

:mod:`memory.ranking` turns an intent into score adjustments. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from memory.time_anchor import TimeWindow, time_window

__all__ = ["QueryIntent", "classify_query"]

# Past-tense cues about the user's own circumstances. "did I" alone is not enough ("did I tell you my
# name?" asks about now), so the verb after it must be one of those that name a state that can change.
_PAST = re.compile(
    r"\b(?:before|(?:did i )?used? to|previous(?:ly)?|former(?:ly)?|originally|in the past|back then|at first|"
    r"old (?:job|address|home|house|city|place|apartment|flat|favou?rite|car|school|employer|company)|"
    r"(?:did|had) i (?:live|work|stay|study|have|own|like|love|prefer|drive|use|eat|play)|"
    r"(?:was|were) my|where was i (?:living|working|based))\b"
)
_ASSISTANT = re.compile(
    r"\b(?:did you (?:say|tell|recommend|suggest|mention|advise|propose|give|list|name|call)|"
    r"you (?:said|told|recommended|suggested|mentioned|advised|proposed|gave|listed|named)|"
    r"your (?:recommendation|suggestion|advice|answer|tip|recipe)|(?:what|which) was it you|"
    r"(?:did|do) you (?:think|remember saying))\b"
)


# A time expression anchors a question in the user's past only when the question looks back: the
# expression itself does ("two months ago", "yesterday", "last spring"), or the question speaks of what
# was said or done then ("what did I say this morning?", "the book I mentioned on Tuesday"). "Recommend a
# restaurant for tonight" or "what should I cook today?" name the present: favouring today's turns would
# bury the preference stated weeks ago that the question needs (tests/memory/test_retrieval.py, the
# vegetarian who asks for restaurants "tonight").
_LOOKS_BACK_PHRASE = re.compile(r"\b(?:ago|yesterday|last|past|previous|earlier|back in)\b")
_LOOKS_BACK = re.compile(
    r"\b(?:did|was|were|had|used to|before|earlier|remember|recall|"
    r"said|told|mentioned|talked|asked|wrote|shared|went|saw|met|bought|read|watched|visited|tried|ate|"
    r"made|got|took|gave|heard|found|started|finished)\b|\b(?:i|we|you) \w+ed\b"
)


@dataclass(frozen=True)
class QueryIntent:
    """How a question wants its memories ranked (see the module docstring)."""

    tense: Literal["current", "past"] = "current"
    window: TimeWindow | None = None
    about_assistant: bool = False

    @property
    def labels(self) -> tuple[str, ...]:
        """Short names for prompts and logs: the tense, then ``"time_anchored"`` and ``"assistant"`` when they apply."""
        return ((self.tense,) + (("time_anchored",) if self.window else ())
                + (("assistant",) if self.about_assistant else ()))


def classify_query(query: str, reference: datetime) -> QueryIntent:
    """The intent of ``query`` asked at ``reference`` (the question's date, which anchors "two months ago")."""
    folded = " ".join(query.casefold().replace("’", "'").split())
    window = time_window(folded, reference)
    if window is not None and not (_LOOKS_BACK_PHRASE.search(window.phrase.casefold()) or _LOOKS_BACK.search(folded)):
        window = None  # a present or future time ("tonight", "this week"): not a period of the past to favour
    return QueryIntent(
        tense="past" if _PAST.search(folded) else "current",
        window=window,
        about_assistant=bool(_ASSISTANT.search(folded)),
    )
