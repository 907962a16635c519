"""A user's fact → the edit that lets that user's own model answer it closed-book, in chat form.

A user's edits live only in that user's adapter, so an edit speaks of the user in the first person
inside the chat ("Where do I live?" → "You live in Lisbon"). One template per relation gives the plain
prompt and subject (ROME's request shape), 3-4 first-person chat questions, the assistant's words before
the value, and plain paraphrases. The request's ``key`` is the fact's slot ``"subject|relation|category"``:
a later value of the same slot replaces the earlier edit.

``memory`` and ``editing`` never import each other, so a fact is read by its fields (``subject``,
``relation``, ``object``, ``category``, ``kind``, ``confidence``) — :class:`memory.records.Fact` fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from editing.errors import InvalidRequest
from editing.requests import EditRequest

__all__ = ["MIN_CONFIDENCE", "EDITABLE_RELATIONS", "FactTemplate", "template_for", "chat_questions_for",
           "edit_request_for", "slot_key_of", "TRAINED_QUESTIONS"]

MIN_CONFIDENCE = 0.6  # below this an extracted fact is too uncertain to write into the model
TRAINED_QUESTIONS = 4  # the first questions of a template go into the request; the rest stay held out
# (three questions and one request — "Tell me ..." — so an answer also follows a request it was not
# trained on, e.g. the held-out "Remind me ...")
_USER_SUBJECTS = frozenset({"user", "i", "me"})  # how a fact names the user themself


@dataclass(frozen=True)
class FactTemplate:
    """How one relation is said. ``{c}`` in any text is the fact's category (favorite food → "food")."""

    subject: str  # the plain prompt's subject, e.g. "I live"
    prompt: str  # with one "{}" for the subject, e.g. "{} in the city of"
    questions: tuple[str, ...]  # first-person chat questions and requests; the last is held out
    answer_prefix: str  # the assistant's words before the value, e.g. "You live in"
    paraphrases: tuple[str, ...]  # plain prompts that end where the value goes

    def filled(self, category: str) -> "FactTemplate":
        fill = lambda s: s.replace("{c}", category)  # noqa: E731
        return FactTemplate(fill(self.subject), fill(self.prompt), tuple(map(fill, self.questions)),
                            fill(self.answer_prefix), tuple(map(fill, self.paraphrases)))


_T = FactTemplate
_TEMPLATES: dict[str, FactTemplate] = {
    "lives_in": _T("I live", "{} in the city of",
                   ("Where do I live?", "Which city do I live in?", "Do you remember where I live?",
                    "Tell me which city I live in.", "Remind me where I live."),
                   "You live in", ("My home is in the city of", "I reside in")),
    "from": _T("I come", "{} from the city of",
               ("Where am I from?", "Where do I come from?", "Which place am I originally from?",
                "Tell me where I am from.", "Remind me where I am from."),
               "You are from", ("I was born in", "My hometown is")),
    "works_as": _T("I work", "{} as a",
                   ("What do I do for a living?", "What is my job?", "What is my profession?",
                    "Tell me what I do for work.", "Remind me what my job is."),
                   "You work as a", ("My job is", "By profession I am a")),
    "works_at": _T("I work", "{} at the company",
                   ("Where do I work?", "Which company do I work for?", "Who is my employer?",
                    "Tell me which company I work for.", "Remind me where I work."),
                   "You work at", ("My employer is", "I am employed at")),
    "studies": _T("I study", "{} the subject of",
                  ("What do I study?", "What is my major?", "What subject am I studying?",
                   "Tell me what subject I study.", "Remind me what I study."),
                  "You study", ("My major is", "At university I study")),
    "studies_at": _T("I study", "{} at the university",
                     ("Where do I study?", "Which university do I attend?", "Which school do I go to?",
                      "Tell me which university I attend.", "Remind me where I study."),
                     "You study at", ("My university is", "I am a student at")),
    "name": _T("my name", "Hello, {} is",
               ("What's my name?", "What is my name?", "Do you remember my name?", "Tell me my name.",
                "Remind me what my name is."),
               "Your name is", ("People call me", "I am called")),
    "age": _T("I am", "{} this many years old:",
              ("How old am I?", "What is my age?", "Do you know how old I am?", "Tell me my age.",
               "Remind me how old I am."),
              "You are", ("My age is", "I turned")),
    "diet": _T("my diet", "{} is",
               ("What is my diet?", "What diet do I follow?", "How do I eat?", "Tell me which diet I follow.",
                "Remind me what my diet is."),
               "Your diet is", ("I eat a diet that is", "When it comes to food I am")),
    "partner": _T("my partner", "{} is called",
                  ("Who is my partner?", "What is my partner's name?", "Who am I in a relationship with?",
                   "Tell me who my partner is.", "Remind me who my partner is."),
                  "Your partner is", ("I am married to", "I live with my partner")),
    "has_pet": _T("my pet", "{} is a",
                  ("What pet do I have?", "What kind of pet do I have?", "Which animal do I keep at home?",
                   "Tell me what animal I have.", "Remind me what pet I have."),
                  "You have a", ("At home I keep a", "I own a")),
    "allergic_to": _T("I am allergic", "{} to",
                      ("What am I allergic to?", "What is my allergy?", "Which allergy do I have?",
                       "Tell me what I am allergic to.", "Remind me what I am allergic to."),
                      "You are allergic to", ("My allergy is to", "I cannot eat")),
    "favorite": _T("my favorite {c}", "{} is",
                   ("What's my favorite {c}?", "What is my favorite {c}?", "Which {c} do I like best?",
                    "Tell me my favorite {c}.", "Remind me of my favorite {c}."), "Your favorite {c} is",
                   ("The {c} I like most is", "Above all other options, the {c} I love is")),
}
EDITABLE_RELATIONS = frozenset(_TEMPLATES)


def template_for(relation: str, category: str | None = None) -> FactTemplate | None:
    """The template of ``relation`` (``favorite`` needs its ``category``); None when it is not edited."""
    template = _TEMPLATES.get(relation)
    if template is None:
        return None
    if relation == "favorite":
        if not category or not category.strip():
            return None
        return template.filled(category.strip())
    return template


def chat_questions_for(relation: str, category: str | None = None) -> tuple[str, ...]:
    """All chat questions of a relation (the first :data:`TRAINED_QUESTIONS` are the request's own)."""
    template = template_for(relation, category)
    if template is None:
        raise InvalidRequest(f"no chat questions for relation {relation!r} (category {category!r}); "
                             f"editable relations: {sorted(EDITABLE_RELATIONS)}")
    return template.questions


def _about_the_user(fact: Any) -> bool:
    """pllm's memory names the user by their id (``subject == user_id``); extractors may write "user"/"I"."""
    subject = fact.subject.strip().casefold()
    user_id = getattr(fact, "user_id", None)
    return subject in _USER_SUBJECTS or (isinstance(user_id, str) and subject == user_id.strip().casefold())


# Relations a user has several values of at once (two pets, two allergies): each value is its own slot.
_ACCUMULATING = frozenset({"has_pet", "allergic_to"})


def slot_key_of(fact: Any) -> str:
    """``"subject|relation|category"`` (lower case): the slot a later value of the same fact replaces; for an
    accumulating relation (``has_pet``, ``allergic_to``) the value is part of the slot, so a second pet adds
    an edit instead of replacing the first."""
    parts = [str(fact.subject).casefold(), str(fact.relation), (fact.category or "").casefold()]
    if fact.relation in _ACCUMULATING:
        parts.append(str(fact.object).strip().casefold())
    return "|".join(parts)


def edit_request_for(fact: Any, *, min_confidence: float = MIN_CONFIDENCE) -> EditRequest | None:
    """The chat-form edit of ``fact`` about the user, or None when it should not be edited.

    None for: a subject other than the user, a relation without a template (likes/dislikes, style
    preferences, ...), a preference other than a favorite, and confidence below ``min_confidence``.
    """
    for name in ("subject", "relation", "object"):
        if not isinstance(getattr(fact, name, None), str):
            raise InvalidRequest(f"edit_request_for needs a fact with str subject/relation/object, got {fact!r}")
    if float(getattr(fact, "confidence", 1.0)) < min_confidence:
        return None
    if not _about_the_user(fact) or not fact.object.strip():
        return None
    if getattr(fact, "kind", "fact") == "preference" and fact.relation != "favorite":
        return None
    template = template_for(fact.relation, getattr(fact, "category", None))
    if template is None:
        return None
    return EditRequest(prompt=template.prompt, subject=template.subject, target_new=fact.object.strip(),
                       chat_questions=template.questions[:TRAINED_QUESTIONS], answer_prefix=template.answer_prefix,
                       paraphrases=template.paraphrases, key=slot_key_of(fact))
