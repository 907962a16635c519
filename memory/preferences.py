"""A user's style preference weights: ``w_d`` in [-1, 1] per dimension, from what they said and what they rated.

Dimensions (:data:`memory.relations.DIMENSIONS`): verbosity (concise -1 … detailed +1), formality (casual -1 …
formal +1), expertise (layperson -1 … expert +1). Each has a measurable score of a reply
(:func:`reply_scores`):

* ``verbosity`` — the reply's length in words (``\\w+`` runs; a tokenizer's count can be passed instead);
* ``formality`` — Heylighen & Dewaele's F-score (1999), from spaCy's part-of-speech tags: ``(noun + adjective +
  preposition + article − pronoun − verb − adverb − interjection + 100) / 2``, each a percentage of the reply's
  words (nouns include proper nouns, verbs include auxiliaries, articles are determiners with
  ``PronType=Art``). Higher is more formal: deictic, contextual speech scores low, explicit nominal writing high;
* ``expertise`` — the Flesch-Kincaid grade level (``textstat``): the school grade needed to read it.

A weight comes from two kinds of evidence, both stored with their history, so a weight as of any time can be
recomputed (``as_of``):

* **statements** — the user's current ``prefers_<dimension>`` fact ("keep it short" → concise): the pole's sign
  (times the fact's strength when it has one). A statement resets the dimension: only feedback given after it
  moves the weight further;
* **feedback** — the ratings of replies (:mod:`memory.feedback`; the newest rating of each reply counts). Each
  rated reply's score is standardized against all of the user's stored replies (``z``); the feedback signal is
  the mean of ``rating × z`` over the rated replies, squashed by ``tanh`` (the reference: the rated replies and
  the user's 200 most recent others). A user who likes the longer replies
  and dislikes the shorter ones gets a positive verbosity signal.

``weight = clip(statement + FEEDBACK_GAIN × signal, -1, 1)``; with neither, 0 (no preference).

Drift: a statement that reverses the last one is a ``PreferenceDrift`` from the graph; a rating is one when it
turns a weight to the other pole, or when a ``river`` detector over that dimension's per-rating signal
(:class:`FeedbackDriftMonitor`) fires.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memory.feedback import Feedback, current_ratings
from memory.records import Episode, Fact
from memory.relations import DIMENSIONS

__all__ = ["FEEDBACK_GAIN", "REFERENCE_REPLIES", "FeedbackDriftMonitor", "PreferenceWeight", "formality_f_score", "pole_sign", "preference_weights",
           "rating_signals", "readability_grade", "reply_scores", "word_count"]

FEEDBACK_GAIN = 0.5  # how far ratings alone can move a weight (a statement is worth 1)
REFERENCE_REPLIES = 200  # unrated replies (the most recent) that the rated ones are standardized against
_WORD = re.compile(r"\w+")
_CONTEXTUAL = ("PRON", "VERB", "AUX", "ADV", "INTJ")
_NOMINAL = ("NOUN", "PROPN", "ADJ", "ADP")


def pole_sign(dimension: str, pole: str) -> int:
    """-1 for the dimension's first pole, +1 for its second; ``ValueError`` for anything else."""
    poles = DIMENSIONS.get(dimension)
    if poles is None:
        raise ValueError(f"unknown dimension {dimension!r}; known: {sorted(DIMENSIONS)}")
    if pole not in poles:
        raise ValueError(f"{pole!r} is not a pole of {dimension}; poles: {poles}")
    return -1 if pole == poles[0] else 1


def word_count(text: str) -> float:
    return float(len(_WORD.findall(text)))


def formality_f_score(text: str, nlp: Any = None) -> float:
    """Heylighen & Dewaele's F-score of ``text`` (about 30–75 in practice; 50 when it has no words)."""
    if nlp is None:
        from memory.extraction.clauses import load_pipeline

        nlp = load_pipeline()
    words = [t for t in nlp(text) if not (t.is_punct or t.is_space)]
    if not words:
        return 50.0
    count = {tag: 0 for tag in (*_CONTEXTUAL, *_NOMINAL, "ART")}
    for t in words:
        if t.pos_ == "DET" and "Art" in t.morph.get("PronType"):
            count["ART"] += 1
        elif t.pos_ in count:
            count[t.pos_] += 1
    share = {tag: 100.0 * n / len(words) for tag, n in count.items()}
    nominal = sum(share[t] for t in (*_NOMINAL, "ART"))
    contextual = sum(share[t] for t in _CONTEXTUAL)
    return (nominal - contextual + 100.0) / 2.0


def readability_grade(text: str) -> float:
    """The Flesch-Kincaid grade level (``textstat``; 0 for text without words)."""
    import textstat

    return float(textstat.flesch_kincaid_grade(text)) if _WORD.search(text) else 0.0


def reply_scores(text: str, *, count_tokens: Callable[[str], int] | None = None, nlp: Any = None) -> dict[str, float]:
    """The reply's score on every dimension (see the module docstring); higher is toward the second pole."""
    return {"verbosity": float(count_tokens(text)) if count_tokens else word_count(text),
            "formality": formality_f_score(text, nlp), "expertise": readability_grade(text)}


@dataclass(frozen=True)
class PreferenceWeight:
    """The weight on one dimension and what it rests on."""

    dimension: str
    weight: float  # in [-1, 1]; 0 = no preference
    statement: float  # the explicit part (0 without a current statement)
    feedback: float  # the ratings' signal in [-1, 1] (0 without ratings since the statement)
    ratings: int  # how many rated replies counted
    stated_at: datetime | None = None  # when the counted statement became true
    evidence: tuple[str, ...] = ()  # episode ids: the statement's source turns, then the rated replies

    @property
    def pole(self) -> str | None:
        """The pole the weight leans to (None at 0)."""
        first, second = DIMENSIONS[self.dimension]
        return None if self.weight == 0 else (second if self.weight > 0 else first)


def preference_weights(facts: Sequence[Fact], replies: Sequence[Episode], ratings: Sequence[Feedback], *,
                       scores: Callable[[str], Mapping[str, float]] = reply_scores,
                       as_of: datetime | None = None) -> dict[str, PreferenceWeight]:
    """Every dimension's weight from the user's current ``facts``, their stored ``replies`` and ``ratings``.

    ``as_of``: only ratings given by then count (pass the facts as of then too). ``scores`` maps a reply's text to
    its per-dimension scores (default :func:`reply_scores`); replies are scored once each.
    """
    rated, scored = _scored(replies, ratings, scores, as_of)
    out = {}
    for dim in DIMENSIONS:
        stated = [f for f in facts if f.relation == f"prefers_{dim}" and f.valid_to is None and f.subject == f.user_id]
        fact = max(stated, key=lambda f: f.valid_from, default=None)
        statement = 0.0
        if fact is not None:
            statement = pole_sign(dim, fact.object) * (fact.strength if fact.strength is not None else 1.0)
        counted = [fb for fb in rated.values() if fact is None or fb.at >= fact.valid_from]
        signal = _signal(dim, counted, scored)
        weight = max(-1.0, min(1.0, statement + FEEDBACK_GAIN * signal))
        evidence = (*(fact.source_episode_ids if fact else ()), *(fb.episode_id for fb in counted))
        out[dim] = PreferenceWeight(dim, round(weight, 4) + 0.0, statement, round(signal, 4) + 0.0, len(counted),
                                    fact.valid_from if fact else None, evidence)
    return out


def _scored(replies: Sequence[Episode], ratings: Sequence[Feedback], scores: Callable[[str], Mapping[str, float]],
            as_of: datetime | None) -> tuple[dict[str, Feedback], dict[str, Mapping[str, float]]]:
    """(each rated reply's current rating, the scores of the reference replies) as of ``as_of``.

    The reference: the rated replies and the ``REFERENCE_REPLIES`` most recent others (scoring costs ~ms each).
    """
    rated = current_ratings([r for r in ratings if as_of is None or r.at <= as_of])
    own = [e for e in replies if e.role == "assistant" and (as_of is None or e.recorded_at <= as_of)]
    ids = {e.id for e in own}
    rated = {i: fb for i, fb in rated.items() if i in ids}
    reference = [e for e in own if e.id in rated] + [e for e in own if e.id not in rated][-REFERENCE_REPLIES:]
    return rated, ({e.id: scores(e.text) for e in reference} if rated else {})


def rating_signals(rating: Feedback, replies: Sequence[Episode], ratings: Sequence[Feedback], *,
                   scores: Callable[[str], Mapping[str, float]] = reply_scores) -> dict[str, float]:
    """What one rating says per dimension: ``rating × z(score of the rated reply)`` (0 when replies all score alike)."""
    _, scored = _scored(replies, [*ratings, rating], scores, None)
    own = scored.get(rating.episode_id)
    out = {}
    for dim in DIMENSIONS:
        mean, spread = _spread(dim, scored)
        out[dim] = 0.0 if not spread or own is None else rating.value * (own[dim] - mean) / spread
    return out


def _spread(dim: str, scored: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    """(mean, population sd) of the reference replies' scores on ``dim``; sd 0 with fewer than two."""
    every = [s[dim] for s in scored.values()]
    if len(every) < 2:
        return (every[0] if every else 0.0), 0.0
    return statistics.fmean(every), statistics.pstdev(every)


def _adwin() -> Any:
    """ADWIN checking after every rating (``clock=1``: ratings are sparse), ``delta`` 0.01. On synthetic signals
    (a mean of 0.8 turning to -0.8, noise sd 0.6) it fired 8–10 ratings after the turn and never in 200 steady
    ratings (5 seeds); the default ``delta`` 0.002 took 10–13."""
    from river import drift

    return drift.ADWIN(delta=0.01, clock=1, grace_period=5, min_window_length=3)


class FeedbackDriftMonitor:
    """Per-user, per-dimension ``river`` detectors (ADWIN, see :func:`_adwin`) over each rating's feedback signal.

    The signal of a rating on a dimension is ``rating × z`` of the rated reply's score (:func:`rating_signals`):
    positive while the user likes what scores high (and dislikes what scores low). A detection means the
    user's taste on that dimension changed. State is per process (like :class:`memory.drift.DriftMonitor`):
    the ratings themselves are stored, the detectors are not.
    """

    def __init__(self, *, detector_factory: Callable[[], Any] = _adwin) -> None:
        self._factory = detector_factory
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {}

    def observe(self, user_id: str, signals: Mapping[str, float]) -> list[str]:
        """Feed one rating's signals; returns the dimensions whose detector fired."""
        with self._lock:
            detectors = self._users.setdefault(user_id, {})
            fired = []
            for dim, value in signals.items():
                detector = detectors.setdefault(dim, self._factory())
                detector.update(float(value))
                if detector.drift_detected:
                    fired.append(dim)
            return fired

    def reset(self, user_id: str) -> None:
        with self._lock:
            self._users.pop(user_id, None)


def _signal(dim: str, counted: Sequence[Feedback], scored: Mapping[str, Mapping[str, float]]) -> float:
    """``tanh`` of the mean of ``rating × z(score)`` over the counted ratings (z against all replies)."""
    if not counted:
        return 0.0
    mean, spread = _spread(dim, scored)
    if spread == 0.0:
        return 0.0  # all replies score alike: ratings say nothing about this dimension
    return math.tanh(statistics.fmean(fb.value * (scored[fb.episode_id][dim] - mean) / spread for fb in counted))
