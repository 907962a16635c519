"""The default extractor: ordinary speech, read through spaCy's dependency parse, then the patterns.

``SpeechExtractor`` splits a message into clauses (:mod:`memory.extraction.clauses`: discourse prefixes,
time adverbs and "X, not Y" removed, "we" read as the speaker), runs
:class:`~memory.extraction.patterns.PatternExtractor` on each plain clause, and, where no pattern
matches, a few dependency rules for the ways people state preferences that patterns miss ("I avoid
X", "I have a strong aversion to X", "I'm not interested in X", "I only read X", "I prefer not to X",
"I find X distracting"). A clause about someone else ("my wife Anna is a doctor", "my brother lives in
Rome") yields no fact of the user's own, only how that person is related to them; a person named by role
anywhere in a clause ("I live with my partner Anna", "Anna is my wife") gives that relation. The patterns
on the raw message still run, and fill slots the clauses left empty, so nothing the pattern extractor
found is lost.

A clause that looks like a personal statement (subject "I"/"we"/"my ...", not a question or a
hypothetical) but yields no candidate is logged at INFO level with the text: a scenario author can see
why an expectation failed. The first call loads spaCy (3–5 s); later turns take ~10–15 ms.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from typing import Any

from memory.extraction.base import Candidate
from memory.extraction.clauses import Clause, load_pipeline, split_clauses
from memory.extraction.patterns import PatternExtractor, is_someone, relation_to
from memory.relations import relation_spec

__all__ = ["SpeechExtractor"]

log = logging.getLogger(__name__)

_AVOID = frozenset({"avoid", "dislike", "hate", "despise", "detest", "loathe", "refuse", "resent", "shun"})
_LIKE = frozenset({"love", "like", "enjoy", "adore", "prefer", "favor", "favour"})
_ONLY = frozenset({"only", "exclusively", "solely", "mostly", "always", "usually"})
_HABIT = frozenset({"use", "read", "buy", "eat", "drink", "wear", "watch", "play", "choose", "listen", "stay",
                    "travel", "drive", "shop", "cook", "consider", "book"})
_NOUN_PREFS = {  # "I have a strong aversion to X" / "a love for X"
    **dict.fromkeys(("aversion", "dislike", "distaste", "hatred", "phobia", "fear", "intolerance", "disdain",
                     "objection"), "dislikes"),
    **dict.fromkeys(("preference", "love", "passion", "fondness", "weakness", "affinity", "interest"), "likes"),
}
_NEGATIVE_ADJ = frozenset({"ineffective", "distracting", "boring", "unengaging", "overwhelming", "annoying",
                           "confusing", "stressful", "unpleasant", "tedious", "disorienting", "uncomfortable",
                           "demotivating", "frustrating", "difficult", "hard", "useless", "tiring", "dull"})
_POSITIVE_ADJ = frozenset({"effective", "engaging", "helpful", "relaxing", "useful", "enjoyable", "inspiring",
                           "calming", "fun", "satisfying", "rewarding", "motivating", "easier", "easy"})
_STATE_VERBS = frozenset((
    "be live move relocate work study like love hate prefer enjoy have own adopt start switch become change "
    "quit stop marry eat drink avoid get join leave retire learn train plan want need find use").split())
_OBJECT_DEPS = frozenset({"dobj", "xcomp", "pobj", "attr", "ccomp", "acomp", "oprd"})
_MAX_WORDS = 6
# What a clause about someone else may still say about the user: how they are related.
_RELATIONSHIPS = frozenset({"partner", "mother", "father", "has_sibling", "has_child", "family", "knows", "has_pet"})
_OTHERS = frozenset({"he", "she", "they", "him", "her", "them", "his", "their", "theirs"})
_FORMER = frozenset({"ex", "former", "late", "future", "previous", "deceased"})
_NOT_A_NAME = frozenset({"NORP", "GPE", "LOC", "LANGUAGE", "DATE", "TIME", "CARDINAL", "ORDINAL", "QUANTITY",
                         "MONEY", "PERCENT"})
_NOT_OBJECTS = frozenset({"", "not", "to", "no", "never", "it", "that", "this", "how", "what", "why", "when", "you",
                          "them", "him", "her", "us", "me", "those", "these", "where", "who", "which", "if", "a", "an",
                          "the"})


class SpeechExtractor:
    """Extractor for ordinary speech (spaCy clauses + patterns + dependency rules); ``role="user"`` only.

    ``nlp``: a loaded spaCy pipeline to use instead of the shared ``en_core_web_sm`` (loaded on first use).
    """

    def __init__(self, nlp: Any = None) -> None:
        self._nlp = nlp
        self._patterns = PatternExtractor()

    def extract(self, text: str, *, role: str = "user") -> list[Candidate]:
        """Candidates for every personal statement in ``text``, in order, without duplicates."""
        if role != "user" or not isinstance(text, str) or not text.strip():
            return []
        raw = self._patterns.extract(text, role=role)
        clauses = split_clauses(text.replace("’", "'"), self._nlp or load_pipeline())
        found: list[Candidate] = []
        statements = 0
        for clause in clauses:
            if clause.question or clause.hypothetical:
                continue
            from_clause = self._clause(clause)
            found.extend(from_clause)
            statements += clause.personal and _stative(clause) and not _someone_else(clause)
        found = _style_in_context(found, raw)
        merged = _merge(found, raw)
        if not merged and statements:
            log.info("no fact extracted from personal statement: %r", text)
        return merged

    def _clause(self, clause: Clause) -> list[Candidate]:
        if not clause.text:
            return []
        out = self._patterns.extract(clause.text, role="user") if clause.personal or _imperative(clause) else []
        out = [c for c in out if _usable(c.object)]
        if not out and clause.personal:
            out = _dependency_rules(clause)
        if _someone_else(clause):  # "My wife Anna is a doctor": Anna is, not the user
            out = [c for c in out if c.subject != "user" or c.relation in _RELATIONSHIPS]
        if clause.replaces and out:
            first = out[0]
            if first.relation in ("likes", "favorite") or relation_spec(first.relation).functional:
                out = [replace(first, replaces=clause.replaces), *out[1:]]
        keys = {_key(c) for c in out}
        return out + [c for c in _people(clause) if _key(c) not in keys]


def _style_in_context(clauses: list[Candidate], raw: list[Candidate]) -> list[Candidate]:
    """A style request read in one clause yields to the whole message's reading when they disagree.

    Splitting can cut off what governs the request ("No need to | be formal" leaves "be formal"); the style
    patterns on the whole message see the governor. Where the message makes one request on a dimension (one
    clause candidate) and the whole-message reading names the other pole, the clause candidate is dropped
    and the merge takes the whole-message one. Several requests on one dimension keep the clause reading
    (their order in the message decides).
    """
    poles = {c.relation: c.object for c in raw if c.relation.startswith("prefers_")}
    per_relation = Counter(c.relation for c in clauses if c.relation in poles)
    return [c for c in clauses
            if not (per_relation[c.relation] == 1 and poles.get(c.relation, c.object) != c.object)]


def _usable(obj: str) -> bool:
    """Not a fragment the patterns cut badly ("I prefer not to ..." → "not")."""
    first = obj.split()[0].lower() if obj.split() else ""
    return first not in _NOT_OBJECTS


def _imperative(clause: Clause) -> bool:
    """ "Keep your answers short": style requests have no subject."""
    return clause.head.tag_ == "VB" and not any(c.dep_ in ("nsubj", "nsubjpass") for c in clause.head.children)


def _someone_else(clause: Clause) -> bool:
    """The clause's subject is another person or animal: "my wife Anna ...", "my brother's job ...", "she ..."."""
    node = clause.subject
    if node is None or node.lower_ in ("i", "we") or any(
            c.dep_ == "conj" and c.lower_ in ("i", "we") for c in node.children):  # "My wife and I ..."
        return False
    while node is not None:
        if node.lower_ in _OTHERS or node.ent_type_ == "PERSON" or is_someone(node.lower_):
            return True
        node = next((c for c in node.children if c.dep_ == "poss"), None)
    return False


def _people(clause: Clause) -> list[Candidate]:
    """The user's edge to a named person wherever the clause names one by role.

    "I live with my partner Anna", "My partner is Anna", "Anna is my wife". The first word of the name is
    kept, as the patterns do ("my partner Anna Smith ..." → Anna).
    """
    kept = {t.i for t in clause.tokens}
    out: list[Candidate] = []
    for role in clause.tokens:
        if not any(c.dep_ == "poss" and c.lower_ in ("my", "our") for c in role.children) \
                or any(c.lower_ in _FORMER for c in role.children):
            continue
        name = _named(role, kept)
        edge = relation_to(role.lower_, name.text) if name is not None else None
        if edge is not None:
            out.append(edge)
    return out


def _named(role: Any, kept: set[int]) -> Any:
    """The name token a role word is given: "my partner(,) Anna", "my partner is Anna", "Anna is my partner"."""
    names = [c for c in role.children if c.dep_ == "appos"]
    verb = role.head
    if role.dep_ in ("nsubj", "attr") and verb.lemma_ == "be" and not _negated(verb):
        other = "attr" if role.dep_ == "nsubj" else "nsubj"
        names += [c for c in verb.children if c.dep_ == other and c.ent_type_ not in _NOT_A_NAME]
    for name in names:
        if name.i in kept and name.pos_ == "PROPN":
            return next((c for c in name.lefts if c.dep_ == "compound" and c.pos_ == "PROPN"), name)
    return None


def _stative(clause: Clause) -> bool:
    return clause.head.lemma_.lower() in _STATE_VERBS


def _key(c: Candidate) -> tuple[object, ...]:
    return (c.subject, c.relation, c.object.casefold(), c.category, c.negated)


def _slot(c: Candidate) -> tuple[object, ...] | None:
    spec = relation_spec(c.relation)
    return (c.subject.casefold(), c.relation, c.category if spec.per_category else None) if spec.functional else None


def _merge(clauses: list[Candidate], raw: list[Candidate]) -> list[Candidate]:
    """Clause candidates first; a raw-text candidate only where it adds an edge and no clause filled its slot."""
    seen = {_key(c) for c in clauses}
    slots = {_slot(c) for c in clauses} - {None}
    out: list[Candidate] = []
    for c in clauses:
        if _key(c) in {_key(o) for o in out}:
            continue
        out.append(c)
    for c in raw:
        if _key(c) in seen or (_slot(c) is not None and _slot(c) in slots) or not _usable(c.object):
            continue
        if any(o.relation == c.relation and c.object.casefold().startswith(o.object.casefold()) for o in clauses):
            continue  # "tea instead of coffee" when the clause gave "tea"
        seen.add(_key(c))
        out.append(c)
    return out


# ------------------------------------------------------------------------------------------ dependency rules


def _phrase(token: Any) -> str | None:
    """A short phrase for ``token``: its subtree without relative/adverbial clauses or determiners, ≤ 6 words."""
    cut: set[int] = set()
    for t in token.subtree:
        if t == token or t.i in cut:
            continue
        if t.dep_ in ("relcl", "acl", "advcl", "appos", "parataxis") or _example(t):
            cut.update(x.i for x in t.subtree)
            if t.lower_ == "as":
                cut.add(t.i - 1)  # "such"
        elif t.dep_ in ("det", "poss", "predet", "neg", "aux", "mark") or (t.is_punct and t.text not in "-/"):
            cut.add(t.i)
    kept = [t for t in token.subtree if t.i not in cut]
    words = sum(1 for t in kept if not t.is_punct)
    while words > _MAX_WORDS:
        words -= not kept.pop().is_punct
    text = " ".join("".join(t.text_with_ws for t in kept).split())  # keeps "sci-fi", "one-on-one" whole
    return text.strip(" ,.;:-") or None


def _example(token: Any) -> bool:
    """ "such as X", "like X", "including X" after a noun: examples, not the preference itself."""
    if token.dep_ != "prep":
        return False
    return token.lower_ in ("like", "including") or (token.lower_ == "as" and token.i > 0
                                                     and token.doc[token.i - 1].lower_ == "such")


def _pref(relation: str, token: Any, strength: float = 0.7) -> list[Candidate]:
    obj = _phrase(token)
    if not obj or not _usable(obj):
        return []
    polarity = "dislikes" if relation == "dislikes" else "likes"
    return [Candidate("user", relation, obj, kind="preference", polarity=polarity, strength=strength,  # type: ignore[arg-type]
                      confidence=0.75)]


def _negated(head: Any) -> bool:
    return any(c.dep_ == "neg" for c in head.children)


def _objects(head: Any) -> list[Any]:
    out = []
    for child in head.children:
        if child.dep_ in ("dobj", "xcomp", "ccomp"):
            out.append(child)
        elif child.dep_ == "prep":
            out.extend(g for g in child.children if g.dep_ == "pobj")
    return out


def _dependency_rules(clause: Clause) -> list[Candidate]:
    """Preferences stated in ways the patterns do not cover (PrefEval's wording, mostly)."""
    head = clause.head
    lemma = head.lemma_.lower()
    kept = {t.i for t in clause.tokens}  # not "Due to motion sickness," that the clause dropped
    objects = [o for o in _objects(head) if o.i in kept]
    if lemma in _AVOID and objects:  # "I strictly avoid X", "I refuse to X"
        target = objects[0]
        return _pref("likes" if _negated(head) else "dislikes", target, 0.8)
    if lemma == "prefer" and objects and _negated(objects[0]):  # "I prefer not to dine at rooftops"
        return _pref("dislikes", objects[0])
    if lemma in _LIKE and objects:
        return _pref("dislikes" if _negated(head) else "likes", objects[0])
    if lemma == "have":  # "I have a strong aversion to X", "a preference for X"
        for obj in (c for c in head.children if c.dep_ == "dobj"):
            relation = _NOUN_PREFS.get(obj.lemma_.lower())
            target = [g for p in obj.children if p.dep_ == "prep" for g in p.children if g.dep_ in ("pobj", "pcomp")]
            target = target or [c for c in obj.children if c.dep_ == "acl"]  # parsed "aversion to gamified X"
            if relation == "likes" and any(c.lower_ == "no" for c in obj.children):
                relation = "dislikes"  # "I have no interest in period dramas"
            if relation and target:
                return _pref(relation, target[0], 0.8)
            if obj.lemma_.lower() == "allergy" and target:  # "I have an allergy to coconut"
                thing = _phrase(target[0])
                return [Candidate("user", "allergic_to", thing)] if thing else []
    if lemma == "be":  # "I'm (not) interested in X", "I'm against X", "I'm sensitive to X"
        for adj in (c for c in head.children if c.dep_ in ("acomp", "prep", "attr")):
            target = [g for p in ([adj] if adj.dep_ == "prep" else adj.children) if p.dep_ == "prep"
                      for g in p.children if g.dep_ == "pobj"]
            word = adj.lower_
            if not target:
                continue
            if word == "fan":  # "I am not a fan of high-speed activities such as ..."
                return _pref("dislikes" if _negated(head) else "likes", target[0])
            if word in ("interested", "keen", "passionate", "enthusiastic"):
                return _pref("dislikes" if _negated(head) else "likes", target[0])
            if word in ("against", "sensitive", "averse", "opposed"):
                return _pref("dislikes", target[0], 0.8)
    if lemma == "find":  # "I find flashcards ineffective"
        for comp in (c for c in head.children if c.dep_ in ("ccomp", "oprd", "xcomp", "dobj")):
            adjectives = {t.lower_ for t in comp.subtree} | {c.lower_ for c in head.children}
            subject = [t for t in comp.subtree if t.dep_ in ("nsubj", "dobj")] or [comp]
            if adjectives & _NEGATIVE_ADJ and subject[0].pos_ in ("NOUN", "PROPN"):
                return _pref("dislikes", subject[0])
            if adjectives & _POSITIVE_ADJ and subject[0].pos_ in ("NOUN", "PROPN"):
                return _pref("likes", subject[0])
    if lemma in ("learn", "thrive", "work") and any(c.lower_ in ("best", "better") for c in head.children):
        target = [g for p in head.children if p.dep_ == "prep" for g in p.children if g.dep_ == "pobj"]
        if target:  # "I learn best through one-on-one instruction"
            return _pref("likes", target[0])
    for token in clause.tokens:  # "I started working as a nurse", "I've been working as a chef"
        if token.lemma_ == "work":
            role = [g for p in token.children if p.dep_ == "prep" and p.lower_ == "as" for g in p.children
                    if g.dep_ == "pobj"]
            job = _phrase(role[0]) if role else None
            if job and len(job.split()) <= 3:
                return [Candidate("user", "works_as", job)]
    if lemma in _HABIT and objects and any(c.lower_ in _ONLY for c in head.children):
        return _pref("likes", objects[0], 0.6)  # "I only use open-source software"
    if lemma in _HABIT and objects and _negated(head) and objects[0].pos_ in ("NOUN", "PROPN"):
        return _pref("dislikes", objects[0], 0.6)  # "I don't watch shows with supernatural themes"
    if (lemma == "handle" and _negated(head)) or (lemma == "steer" and any(c.lower_ == "clear" for c in head.children)):
        target = (objects if lemma == "handle" else []) or [g for c in head.children if c.lower_ == "clear" for p in c.children if p.lower_ == "of"
                            for g in p.children if g.dep_ == "pobj"]
        if target:  # "I can't handle X", "I steer clear of X"
            return _pref("dislikes", target[0], 0.8)
    return []
