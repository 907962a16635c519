"""The default extractor: deterministic regular expressions over a user's personal statements.

Fast (well under a millisecond for a typical turn), offline, and conservative: a pattern must match at
the start of a clause ("I live in Oslo", "my sister Anna ..."), so questions, hypotheticals ("if I lived
in Paris"), reported speech ("my friend said she lives in Rome") and quoted text yield nothing.

Pipeline per message: drop quoted text → split into sentences → skip questions / hypotheticals / reported
speech for facts (style requests count even as questions: "could you keep it short?") → split sentences
into clauses at conjunctions before "I"/"my" → per clause, first the style rules, then the rules that carry
their own negation ("I don't like X" is a dislike, not a retraction), then strip a negation ("I no longer
live in X" → negated "I live in X") and run the positive rules. The first rule that matches a clause wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from memory.extraction.base import Candidate
from memory.relations import canonical_category

__all__ = ["PatternExtractor", "is_someone", "relation_to"]

_Build = Callable[[re.Match[str]], list[Candidate]]
_F = re.IGNORECASE

# ------------------------------------------------------------------------------------------ text helpers

_QUOTED = re.compile(r'"[^"]*"|“[^”]*”')
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSE = re.compile(
    r"(?:\s*[,;]\s*(?:(?:and|but|so|because|cause|though|although|while|plus|also|then|since)\s+)?"
    r"|\s+(?:and|but|so|because|cause|though|although|while|plus|then|since)\s+)(?=(?:i|i'm|i've|i'd|my)\b)", _F)
_QUESTION_START = re.compile(
    r"^(?:do|does|did|am|is|are|was|were|can|could|would|should|will|shall|what|where|who|whom|whose|which|"
    r"when|why|how|have|has|may|might)\b", _F)
_HYPOTHETICAL = re.compile(
    r"^(?:if|suppose|supposing|imagine|assuming|unless|hypothetically|maybe|perhaps|what if|in case|when i was|"
    r"i wish|i would(?! like| love)|i'd(?! like| love| prefer)|i might|i may|i could|i should|i used to|"
    r"let's say|say)\b", _F)
_REPORTED = re.compile(r"\b(?:said|says|told|tells|asked|asks|claims?|claimed|thinks|thought|believes|believed)\b", _F)
_OWN_REPORT = re.compile(r"^(?:as )?i (?:said|told you|mentioned)(?: before| earlier)?,?(?: that)?\s+", _F)
_FILLER = re.compile(
    r"^(?:(?:well|oh|ok|okay|so|also|and|but|actually|btw|by the way|anyway|anyways|yeah|yes|yep|hi|hey|"
    r"hello|now|fyi|fun fact|honestly|basically|just so you know|guess what|update|news)\b[,:!]?\s*|"
    r"(?:no|nope)[,:!]+\s*|nope\s+)+", _F)  # a bare "no" governs what follows ("no need to be formal")
_CUT = re.compile(
    r"\s*(?:[,;:()]|\s-\s|\b(?:and|but|because|cause|since|so|which|who|where|when|while|though|although|that|"
    r"than|or|if|unless|as well|rather)\b)", _F)
_TRAILING = re.compile(
    r"\s+(?:now|today|currently|these days|nowadays|at the moment|right now|any ?more|any longer|again|too|also|"
    r"lately|recently|actually|really|very much|so much|a lot|a bunch|all the time|daily|often|regularly|"
    r"(?:every|each|most) (?:single )?(?:morning|day|night|evening|week|weekend|afternoon)s?|"
    r"in the (?:morning|evening)s?|"
    r"for (?:a living|work|fun)|by (?:profession|trade|occupation)|professionally|"
    r"for (?:the )?(?:past |last )?(?:\d+|a|an|many|several|some|over|about|almost|nearly|"
    r"one|two|three|four|five|six|seven|eight|nine|ten)\b.*|with (?:my|our|a|an|the|two|three)\b.*|"
    r"(?:next|last|this) (?:week|month|year|summer|winter|spring|fall|autumn|weekend)\b.*|"
    r"(?:\w+ )?(?:years?|months?|weeks?|days?) ago|in (?:\d{4}|january|february|march|april|may|june|july|"
    r"august|september|october|november|december)\b.*)$", _F)
_LEAD = re.compile(r"^(?:the|a|an|some|my|our)\s+", _F)
_PRONOUN_OBJECT = re.compile(r"^(?:it|that|this|these|those|you|your|them|him|her|what|how|when|being|doing)\b", _F)


def _trim(text: str | None, *, max_words: int = 5, lead: bool = True) -> str | None:
    """Cut an object at the first conjunction/comma, drop time adverbials and articles; None if unusable."""
    if not text:
        return None
    m = _CUT.search(text)
    text = text[: m.start()] if m else text
    previous = None
    while previous != text:
        previous = text
        text = _TRAILING.sub("", text.strip(" .!?,;:'\"")).strip(" .!?,;:'\"")
    if lead:
        text = _LEAD.sub("", text)
    if not text or len(text.split()) > max_words or _PRONOUN_OBJECT.match(text):
        return None
    return text


def _gerund(phrase: str) -> str:
    """ "to cook" → "cooking", "run marathons" → "running marathons" (for "I like to ...")."""
    verb, _, rest = phrase.removeprefix("to ").partition(" ")
    v = verb.lower()
    if v.endswith("ie"):
        v = v[:-2] + "y"
    elif v.endswith("e") and not v.endswith(("ee", "ye", "oe")) and len(v) > 2:
        v = v[:-1]
    elif (len(v) <= 4 and len(v) >= 3 and v[-1] not in "aeiouwxy" and v[-2] in "aeiou"
          and v[-3] not in "aeiou"):
        v = v + v[-1]
    return f"{v}ing {rest}".strip()


def _name(text: str | None) -> str | None:
    """A person's or pet's name as written: 1-2 words, must start with a letter; title-cased if all lower."""
    if not text:
        return None
    words = text.split()[:2]
    if len(words) == 2 and not words[1][:1].isupper():
        words = words[:1]
    name = " ".join(w.strip(".,!?;:") for w in words)
    if not name or not name[0].isalpha() or name.lower() in _NOT_NAMES:
        return None
    return name if any(c.isupper() for c in name) else name.title()


_NOT_NAMES = frozenset(
    "fine good great ok okay sorry here back done ready sure not so just really very still also always never tired "
    "happy sad busy home hungry bored lost new old single married english american british french german spanish "
    "italian norwegian swedish danish dutch chinese japanese indian canadian australian mexican brazilian irish "
    "scottish welsh polish russian korean vegetarian vegan the a an is was".split())

_NOT_JOBS = frozenset(
    "bit little lot big huge total complete real true good bad great terrible fan beginner novice newbie noob expert "
    "vegetarian vegan pescatarian person people morning night cat dog mother father mom mum dad parent single twin "
    "man woman guy girl boy kid child adult native citizen member part fast slow quick very pretty kind sort type "
    "proud happy new old long first second one lover believer perfectionist introvert extrovert human fairly strong "
    "firm early late light heavy picky".split())

_SPECIES = (r"dogs?|puppy|puppies|cats?|kittens?|hamsters?|rabbits?|bunny|bunnies|parrots?|birds?|fish|goldfish|"
            r"turtles?|tortoises?|snakes?|lizards?|horses?|guinea pigs?|ferrets?|geckos?|budgies?|chickens?")
_ROLES = {
    **dict.fromkeys(("sister", "brother", "sibling", "twin"), "has_sibling"),
    **dict.fromkeys(("son", "daughter", "kid", "child", "baby"), "has_child"),
    **dict.fromkeys(("mother", "mom", "mum"), "mother"), **dict.fromkeys(("father", "dad"), "father"),
    **dict.fromkeys(("wife", "husband", "partner", "girlfriend", "boyfriend", "fiance", "fiancé", "fiancee",
                     "fiancée", "spouse"), "partner"),
    **dict.fromkeys(("grandmother", "grandma", "grandfather", "grandpa", "aunt", "uncle", "cousin", "niece",
                     "nephew", "stepmother", "stepfather", "stepson", "stepdaughter"), "family"),
    **dict.fromkeys(("friend", "colleague", "coworker", "boss", "roommate", "neighbor", "neighbour"), "knows"),
}
_ROLE_RE = "|".join(sorted(_ROLES, key=len, reverse=True))
_COUNT = r"a|an|one|two|three|four|five|six|\d+"
_STRENGTH = {"love": 0.9, "adore": 0.9, "like": 0.6, "enjoy": 0.7, "prefer": 0.7, "dig": 0.6, "fancy": 0.6,
             "hate": 0.9, "loathe": 0.9, "detest": 0.9, "despise": 0.9}


def _singular(word: str) -> str:
    word = word.lower()
    if word in ("fish", "goldfish"):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word in ("puppy", "bunny", "puppies", "bunnies"):
        return {"puppies": "puppy", "bunnies": "bunny"}.get(word, word)
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _user(relation: str, obj: str | None, **kw: object) -> list[Candidate]:
    return [Candidate("user", relation, obj, **kw)] if obj else []  # type: ignore[arg-type]


def _pref(relation: str, obj: str | None, verb: str = "like", **kw: object) -> list[Candidate]:
    polarity = "dislikes" if relation == "dislikes" else "likes"
    strength = _STRENGTH.get(verb.lower().split()[-1], 0.6 if polarity == "likes" else 0.8)
    return _user(relation, obj, kind="preference", polarity=polarity, strength=strength, **kw)


# ------------------------------------------------------------------------------------------ style rules

_STYLE: list[tuple[re.Pattern[str], str, str]] = [(re.compile(p, _F), dim, pole) for p, dim, pole in (
    (r"\b(?:keep|make) (?:your |the |all |my |these |things )?(?:answers?|responses?|replies|reply|it|them|things|"
     r"explanations?|messages?)(?: \w+)? (?:short|shorter|brief|briefer|concise|to the point|succinct)\b",
     "verbosity", "concise"),
    (r"\b(?:be|being) (?:more |a bit more |very |extremely )?(?:brief|concise|succinct|terse)\b",
     "verbosity", "concise"),
    (r"\b(?:prefer|like|want|need|give me) (?:short|shorter|brief|concise|quick) (?:answers?|responses?|replies)\b",
     "verbosity", "concise"),
    (r"\b(?:short|shorter|brief|concise) (?:answers?|responses?|replies) (?:please|only|are fine|work best)\b",
     "verbosity", "concise"),
    (r"\b(?:(?:that's|that was|this is|answers are|responses are|it's) (?:way |far |much )?too long|tl;?dr|"
     r"less detail|fewer details|no more details?|less verbose|stop rambling|just the (?:answer|facts|gist)|get to the point)\b",
     "verbosity", "concise"),
    (r"\b(?:give me|want|need|prefer|like|provide) (?:more |lots of |a lot more |plenty of |full |all the )?"
     r"(?:details?|(?:detailed|in-depth|longer|thorough) (?:answers?|explanations?|responses?))\b",
     "verbosity", "detailed"),
    (r"\bexplain (?:it |this |that |things |everything )?in (?:more |great |full |much more )?(?:depth|detail)\b|"
     r"(?<!no )\b(?:more|greater|much more|a lot more) (?:detail|details|depth)\b|"
     r"\b(?:longer|fuller|more detailed|more thorough|in-depth) (?:answers?|explanations?|responses?|replies)\b",
     "verbosity", "detailed"),
    (r"\b(?:be|being) (?:more )?(?:detailed|thorough|comprehensive|elaborate)\b|\bplease elaborate\b|"
     r"\bgo into (?:more |greater |a lot more |much more |full )?detail\b|"
     r"\b(?:your answers are|that's|that was|it's) too (?:short|brief|terse)\b", "verbosity", "detailed"),
    (r"\b(?:casual|informal) is (?:fine|ok|okay|good|great|better)\b|"
     r"\b(?:be|keep it|keep things|stay) (?:more |a bit more )?(?:casual|informal|relaxed|chill)\b|"
     r"\b(?:no need to be|don't be so|(?:you )?(?:don't|do not) (?:have|need) to be|stop being so) (?:so )?"
     r"(?:formal|stiff|professional)\b|"
     r"\b(?:talk|speak|chat) to me like a friend\b", "formality", "casual"),
    (r"\b(?:be|sound|stay|keep it|keep things) (?:more |a bit more |very )?(?:formal|professional)\b|"
     r"\b(?:a |more )?(?:formal|professional) (?:tone|language|style|register)\b|\bdon't be so (?:casual|informal)\b|"
     r"\bno (?:more )?slang\b", "formality", "formal"),
    (r"\bi(?:'m| am) (?:a |an |just a |only a )?(?:complete |total |absolute |real )?(?:beginner|novice|newbie|noob|"
     r"layperson|layman)\b|\bexplain (?:it |this |that |things )?(?:to me )?like i(?:'m| am) (?:five|5|a (?:child|kid|"
     r"five[- ]year[- ]old|5[- ]year[- ]old|beginner))\b|\beli5\b|\b(?:in|use) (?:simple|plain|layman'?s?|everyday) "
     r"(?:terms|english|language|words)\b|\bi(?:'m| am) not (?:a |an )?(?:expert|technical|tech[- ]savvy)\b|"
     r"\bi(?:'m| am) (?:brand )?new to\b|\b(?:no|without|less) (?:jargon|technical terms)\b", "expertise", "layperson"),
    (r"\bi(?:'m| am) (?:an? )?(?:expert|specialist|domain expert)\b|\bskip the (?:basics|intro|introduction|"
     r"fundamentals|101)\b|\b(?:get|be) (?:more )?technical\b|\bi know the basics\b|\b(?:no need to|don't) "
     r"(?:dumb (?:it|things) down|simplify|oversimplify)\b|\bassume i know\b", "expertise", "expert"),
)]


def _style(clause: str) -> list[Candidate]:
    found: dict[str, Candidate] = {}
    for pattern, dim, pole in _STYLE:
        if dim not in found and pattern.search(clause):
            found[dim] = Candidate("user", f"prefers_{dim}", pole, kind="preference")
    return list(found.values())


# ------------------------------------------------------------------------------------------ fact rules


def _third_party(name: str, rest: str) -> list[Candidate]:
    """Facts about a named third party: "(Anna) lives in Berlin", "(Tom) is a doctor", "(Mia) loves horses"."""
    for pattern, relation in _THIRD:
        m = pattern.match(rest)
        if m:
            obj = m.group("obj")
            if relation == "age":
                return [Candidate(name, "age", obj)]
            if relation == "works_as" and (obj.split()[0].lower() in _NOT_JOBS):
                return []
            obj = _trim(obj, max_words=4)
            if relation in ("likes", "dislikes"):
                polarity: Literal["likes", "dislikes"] = "likes" if relation == "likes" else "dislikes"
                return [Candidate(name, relation, obj, kind="preference", polarity=polarity)] if obj else []
            return [Candidate(name, relation, obj)] if obj else []
    return []


_THIRD = [(re.compile(p, _F), r) for p, r in (
    (r"^\s+(?:lives|is living|is based) in (?P<obj>.+)", "lives_in"),
    (r"^\s+(?:just )?moved to (?P<obj>.+)", "lives_in"),
    (r"^\s+works as (?:a |an )?(?P<obj>.+)", "works_as"), (r"^\s+works (?:at|for) (?P<obj>.+)", "works_at"),
    (r"^\s+is (?P<obj>\d{1,3})(?: years old)?\s*$", "age"), (r"^\s+is (?:a|an) (?P<obj>.+)", "works_as"),
    (r"^\s+(?:loves|likes|enjoys|adores) (?P<obj>.+)", "likes"), (r"^\s+(?:hates|dislikes) (?P<obj>.+)", "dislikes"),
    (r"^\s+is allergic to (?P<obj>.+)", "allergic_to"), (r"^\s+is from (?P<obj>.+)", "from"),
    (r"^\s+studies (?P<obj>.+)", "studies"),
)]


def relation_to(role: str, name: str) -> Candidate | None:
    """The user's edge to a person named by role: ("wife", "Anna") → partner Anna (category "wife").

    None when ``role`` is not a family/partner/acquaintance word or ``name`` does not look like a name.
    """
    relation = _ROLES.get(role.lower())
    if relation is None or not name or not name[0].isupper() or name.lower() in _NOT_NAMES:
        return None
    category = None if relation in ("mother", "father") else role.lower().replace("é", "e")
    return Candidate("user", relation, name, category=category)


def is_someone(word: str) -> bool:
    """ "wife", "friend", "dog", "kittens": a word for a person or animal in the user's life."""
    word = word.lower()
    return word in _ROLES or _singular(word) in _ROLES or re.fullmatch(_SPECIES, word) is not None or word in (
        "parent", "parents", "family", "grandparent", "grandparents", "pet", "pets", "kids", "children", "twins")


def _family(m: re.Match[str]) -> list[Candidate]:
    name = m.group("name")
    edge = relation_to(m.group("role"), name)
    return [edge, *_third_party(name, m.group("rest") or "")] if edge else []


def _have_family(m: re.Match[str]) -> list[Candidate]:
    role = _singular(m.group("role"))
    role = {"kid": "child", "children": "child", "sibling": "sibling"}.get(role, role)
    relation = _ROLES.get(role, "family")
    names = [n for n in re.split(r",\s*|\s+and\s+", m.group("names") or "") if _name(n)]
    if names:
        return [Candidate("user", relation, _name(n), category=role) for n in names]  # type: ignore[arg-type]
    count = m.group("n").lower()
    obj = role if count in ("a", "an", "one") else f"{count} {m.group('role').lower()}"
    return [Candidate("user", relation, obj, category=role)]


def _pets(m: re.Match[str]) -> list[Candidate]:
    species = _singular(m.group("sp"))
    names = [n for n in re.split(r",\s*|\s+and\s+", m.group("names") or "") if _name(n)]
    if names:
        return [Candidate("user", "has_pet", _name(n), category=species) for n in names]  # type: ignore[arg-type]
    count = (m.group("n") or "a").lower()
    obj = species if count in ("a", "an", "one", "another") else f"{count} {m.group('sp').lower()}"
    return [Candidate("user", "has_pet", obj, category=species)]


def _my_pet(m: re.Match[str]) -> list[Candidate]:
    name = m.group("name")
    if not name[0].isupper() or name.lower() in _NOT_NAMES:
        return []
    return [Candidate("user", "has_pet", name, category=_singular(m.group("sp")))]


def _job(m: re.Match[str]) -> list[Candidate]:
    raw = m.group("obj")
    if raw.split()[0].lower() in _NOT_JOBS or re.search(r"\b(?:of|person|fan|lover)\b", raw, _F):
        return []
    job, employer = (re.split(r"\s+(?:at|for(?! a living\b| work\b| fun\b))\s+", raw, maxsplit=1, flags=_F)
                     + [""])[:2]  # "nurse at St Olav", not "nurse for a living"
    out = _user("works_as", _trim(job, max_words=3, lead=False))
    return out + _user("works_at", _trim(employer, max_words=4)) if out else []


def _age(m: re.Match[str]) -> list[Candidate]:
    age = int(m.group("obj"))
    return _user("age", str(age)) if 0 < age < 130 else []


def _study(m: re.Match[str]) -> list[Candidate]:
    where = m.groupdict().get("at")
    return _user("studies", _trim(m.group("obj"), max_words=4)) + _user("studies_at", _trim(where, max_words=5))


def _likes_verb(m: re.Match[str]) -> list[Candidate]:
    raw = m.group("obj")
    if raw.lower().startswith("to "):
        raw = _gerund(raw)
    return _pref("likes", _trim(re.split(r"\s+(?:over|to|instead of)\s+", raw, maxsplit=1)[0]), m.group("verb"))


def _dislikes(m: re.Match[str]) -> list[Candidate]:
    verb = m.group("verb").lower()
    raw = m.group("obj")
    if raw.lower().startswith("to "):
        raw = _gerund(raw)
    if re.search(r"\b(?:any ?more|any longer)\b", raw, _F) and ("like" in verb or "enjoy" in verb):
        return _pref("likes", _trim(raw), negated=True)  # "I don't like X anymore": the liking ended
    return _pref("dislikes", _trim(raw), verb)


def _switch(m: re.Match[str]) -> list[Candidate]:
    old, new = _trim(m.groupdict().get("old")), _trim(m.group("new"))
    if not new:
        return []
    out = _pref("likes", old, negated=True) if old else []
    return out + _pref("likes", new, replaces=old)


def _meat(m: re.Match[str]) -> list[Candidate]:
    diet = "vegan" if "animal" in m.group(0).lower() else "vegetarian"
    return _user("diet", diet) + _pref("likes", "meat", negated=True)


def _goal(m: re.Match[str]) -> list[Candidate]:
    lead = m.group("lead").lower()
    obj = _trim(m.group("obj"), max_words=6, lead=False)
    if not obj or obj.split()[0].lower() in _NOT_GOALS:
        return []
    if lead.endswith("learning"):
        obj = f"learn {obj}"
    elif lead.endswith("training for"):
        obj = f"train for {obj}"
    return _user("goal", obj)


def _moving(m: re.Match[str]) -> list[Candidate]:
    place = _trim(m.group("obj"), max_words=4)
    return _user("plans", f"move to {place}") if place else []


_NOT_GOALS = frozenset(("know ask see check understand say thank talk tell hear clarify confirm make find get be try "
                        "share mention add note point discuss go change continue chat have do say write read").split())


def _slot(relation: str, max_words: int = 4) -> _Build:
    """A builder for "the rest of the clause is the value of ``relation``"."""
    return lambda m: _user(relation, _trim(m.group("obj"), max_words=max_words))


def _rules(table: list[tuple[str, _Build]]) -> list[tuple[re.Pattern[str], _Build]]:
    return [(re.compile(p, _F), b) for p, b in table]


_I_AM = r"i(?:'m| am)"
_OBJ = r"(?P<obj>.+)"

# Rules with their own negation semantics: run on the clause as written, before negation stripping.
_SPECIAL = _rules([
    (rf"^i (?:really |absolutely |just |honestly |totally |truly )*(?P<verb>hate|dislike|detest|loathe|despise|"
     rf"can't stand|cannot stand|can not stand|don't like|do not like|don't enjoy|do not enjoy|don't care for) {_OBJ}",
     _dislikes),
    (rf"^{_I_AM} (?P<verb>not (?:a (?:big |huge )?fan of|into|fond of)) {_OBJ}", _dislikes),
    (r"^i (?:don't|do not|no longer|never|stopped eating|quit eating) eat (?:any )?(?:red )?(?:meat|animal products)\b|"
     r"^i (?:stopped|quit|gave up) eating (?:red )?meat\b", _meat),
    (r"^i(?:'ve| have)? (?:just |recently |finally )?(?:switched|changed|swapped|moved on) (?:over )?from (?P<old>.+?) "
     r"to (?P<new>.+)", _switch),
    (r"^i(?:'ve| have)? (?:just |recently |finally )?(?:switched|changed|swapped) (?:over )?to (?P<new>.+)", _switch),
    (r"^i(?:'ve| have)? (?:just )?(?:quit|left) my (?:job|position|role)(?: (?:at|with) (?P<obj>.+))?",
     lambda m: _user("works_at", _trim(m.group("obj")), negated=True)),
    (r"^i(?:'ve| have)? (?:just )?(?:stopped|quit|gave up|given up|cut out) (?:(?:drinking|eating|playing|watching|"
     rf"using|doing|taking) )?{_OBJ}", lambda m: _pref("likes", _trim(m.group("obj")), negated=True)),
])

_NEGATIONS = [(re.compile(p, _F), r) for p, r in (
    (rf"^{_I_AM} (?:no longer|not)\s+", "i'm "), (r"^i (?:no longer|don't|do not|didn't|did not|never)\s+", "i "),
    (r"^i (?:haven't|have not|no longer have)(?: got)?\s+", "i have "),
)]
_NEG_TAIL = re.compile(r"\s+(?:any ?more|any longer|no more)\s*[.!]*$", _F)

_RULES = _rules([
    (r"^(?:my name is|my name's|call me|you can call me|people call me|everyone calls me|"
     rf"{_I_AM} called|they call me)\s+{_OBJ}", lambda m: _user("name", _name(m.group("obj")))),
    (rf"^{_I_AM} (?P<obj>\d{{1,3}})(?:\s*(?:years?|yrs?)(?:\s*old)?|\s*y/?o)?\s*$", _age),
    (r"^(?:i (?:just )?turned|my age is) (?P<obj>\d{1,3})\b", _age),
    (rf"^i (?:currently |now |still |actually )?live (?:in|near) {_OBJ}", _slot("lives_in")),
    (rf"^i(?:'ve| have) (?:been )?(?:living|lived) in {_OBJ}", _slot("lives_in")),
    (rf"^i(?:'ve| have)? (?:just |recently |finally )?(?:moved|relocated)(?: back| over)?(?: here)?(?: from .+?)? "
     rf"to {_OBJ}", _slot("lives_in")),
    (rf"^{_I_AM} (?:currently |now )?(?:based|living|located|staying) in {_OBJ}", _slot("lives_in")),
    (rf"^(?:{_I_AM} (?:originally )?from|i (?:originally )?come from|i grew up in|"
     rf"i was (?:born and raised|born|raised) in) {_OBJ}", _slot("from")),
    (rf"^{_I_AM} (?:very |highly |severely |deathly |also |really |quite |a bit )*allergic to {_OBJ}",
     _slot("allergic_to", 3)),
    (r"^i have (?:an? )?(?:severe |mild |bad |serious |slight )?(?P<obj>[\w -]+?) allergy\b", _slot("allergic_to", 3)),
    (rf"^{_I_AM} (?:now |currently |strictly |fully )?(?:a |an )?(?P<obj>vegetarian|vegan|pescatarian|pescetarian|"
     r"flexitarian)\b", lambda m: _user("diet", m.group("obj").lower())),
    (r"^i(?:'ve| have)? (?:went|became|turned|gone|become) (?P<obj>vegetarian|vegan|pescatarian)\b",
     lambda m: _user("diet", m.group("obj").lower())),
    (rf"^(?:{_I_AM} on|i (?:strictly )?(?:follow|eat|keep|stick to|adhere to)) an? (?:strict )?"
     r"(?P<obj>[\w-]+(?: [\w-]+)?) diet\b", lambda m: _user("diet", m.group("obj").lower())),
    (r"^my (?:absolute |all-time |all time |current |new )?favou?rite (?P<cat>[a-z]+(?: [a-z]+)?) (?:is|are|has to be|"
     rf"would be|must be) {_OBJ}",
     lambda m: _user("favorite", _trim(m.group("obj")), kind="preference", category=m.group("cat"))),
    (r"^(?P<obj>[\w' -]+?) (?:is|are) my (?:absolute |all-time )?favou?rite(?: (?P<cat>[a-z]+(?: [a-z]+)?))?\s*$",
     lambda m: _user("favorite", _trim(m.group("obj")), kind="preference", category=m.group("cat"))),
    (rf"^my (?:(?:older|younger|little|big|twin|baby|eldest|oldest|youngest|best|step|new) )*(?P<role>{_ROLE_RE})"
     r"(?:'s name is| is (?:called|named)|,| named| called)?\s+(?P<name>[\w'-]+)(?P<rest>.*)$", _family),
    (rf"^{_I_AM} married to (?P<obj>.+)", lambda m: _user("partner", _name(m.group("obj")), category="spouse")),
    (rf"^i (?:have|'ve got|have got) (?P<n>{_COUNT}) (?:(?:older|younger|little|big|twin|baby) )*(?P<role>sisters?|"
     r"brothers?|sons?|daughters?|kids?|children|child|siblings?)(?:\s+(?:named|called)\s+(?P<names>[\w' ,-]+))?",
     _have_family),
    (rf"^i(?:'ve| have)? (?:just |recently |also )?(?:have|own|got|adopted|rescued) (?:got )?(?P<n>{_COUNT}|another) "
     rf"(?P<sp>{_SPECIES})(?:\s+(?:named|called)\s+(?P<names>[\w' ,-]+))?\b", _pets),
    (rf"^my (?P<sp>{_SPECIES})(?:'s name is| is (?:called|named)|,)?\s+(?P<name>[\w'-]+)", _my_pet),
    (rf"^i (?:really |absolutely |just |also |truly |totally |do |still )*(?P<verb>love|like|enjoy|adore|prefer|dig|"
     rf"fancy) {_OBJ}", _likes_verb),
    (rf"^{_I_AM} (?:really |so |very |totally |also )*(?P<verb>into|passionate about|obsessed with|crazy about|fond of|"
     rf"a (?:big |huge )?fan of|keen on) {_OBJ}", lambda m: _pref("likes", _trim(m.group("obj")), "love")),
    # a habit ("I drink tea", "I read sci-fi"), not one occasion ("I read an article about space")
    (rf"^i (?P<verb>drink|eat|play|watch|read|listen to) (?:(?:a lot of|lots of|plenty of) )?"
     rf"(?!(?:a|an|one|this|that)\b){_OBJ}",
     lambda m: _pref("likes", _trim(m.group("obj")), confidence=0.7)),
    (rf"^{_I_AM} (?:currently )?(?:studying|majoring in) (?P<obj>.+?)(?: at (?P<at>.+))?$", _study),
    (r"^i (?:study|major in) (?P<obj>.+?)(?: at (?P<at>.+))?$", _study),
    (rf"^{_I_AM} (?:a|an) (?P<obj>[\w ]+?) (?:student|major)(?: at (?P<at>.+))?$", _study),
    (rf"^{_I_AM} (?:a |an )?student at (?P<at>.+)", lambda m: _user("studies_at", _trim(m.group("at")))),
    (rf"^(?:{_I_AM} planning (?:to|on)|i plan (?:to|on)|{_I_AM} going to (?=(?:visit|travel|move|start|learn|run|buy|"
     rf"build|take|get married|apply|open|launch|write|retire)\b)) {_OBJ}",
     lambda m: _user("plans", _trim(m.group("obj"), max_words=6, lead=False))),
    (rf"^{_I_AM} (?:moving|relocating) to {_OBJ}", _moving),
    (rf"^(?P<lead>i want to|i'd like to|i would like to|i'd love to|i would love to|i hope to|i aim to|i intend to|"
     rf"i dream of|my goal is to|my dream is to|{_I_AM} trying to|{_I_AM} hoping to|{_I_AM} learning|"
     rf"{_I_AM} training for) {_OBJ}", _goal),
    (rf"^(?:i work (?:as|in) (?:a |an )?|{_I_AM} (?:currently )?(?:working|employed) as (?:a |an )?|"
     rf"i(?:'ve| have)? (?:just |recently )?(?:started|got|landed|took|accepted|began|have) (?:a |my |the )?"
     rf"(?:new |first )?(?:job|position|role) as (?:a |an )?|"
     rf"my (?:job|profession|occupation) is (?:a |an )?|{_I_AM} (?:a|an) ){_OBJ}", _job),
    (rf"^(?:i (?:currently )?work (?:at|for)|{_I_AM} (?:currently )?(?:working|employed) (?:at|for|by)|"
     rf"i(?:'ve| have)? (?:just )?(?:joined|started (?:working )?at|got a (?:new )?job at|got hired (?:at|by))) {_OBJ}",
     _slot("works_at")),
    (rf"^{_I_AM} (?P<obj>[A-Z][\w'-]*(?: [A-Z][\w'-]*)?)\s*[.!]*$",
     lambda m: _user("name", _name(m.group("obj"))) if m.group("obj")[0].isupper() else []),
])


class PatternExtractor:
    """Offline, deterministic extractor of personal statements (only ``role="user"`` yields candidates)."""

    def extract(self, text: str, *, role: str = "user") -> list[Candidate]:
        """Candidates for every personal statement in ``text``, in order, without duplicates."""
        if role != "user" or not isinstance(text, str) or not text.strip():
            return []
        text = _QUOTED.sub(" ", text.replace("’", "'").replace("‘", "'"))
        found: list[Candidate] = []
        for sentence in _SENTENCE.split(text):
            sentence = _OWN_REPORT.sub("", _FILLER.sub("", sentence.strip()))
            facts_ok = not (sentence.endswith("?") or _QUESTION_START.match(sentence)
                            or _HYPOTHETICAL.match(sentence) or _REPORTED.search(sentence))
            for clause in _CLAUSE.split(sentence):
                found.extend(self._clause(_FILLER.sub("", clause.strip()).rstrip(" .!?,;:"), facts_ok))
        seen: set[tuple[object, ...]] = set()
        unique = []
        for c in found:
            key = (c.subject, c.relation, c.object.casefold(), c.category, c.negated)
            if key not in seen:
                seen.add(key)
                unique.append(replace(c, category=canonical_category(c.category)))  # "colour" → "color"
        return unique

    def _clause(self, clause: str, facts_ok: bool) -> list[Candidate]:
        if not clause:
            return []
        style = _style(clause)
        if style or not facts_ok:
            return style
        for pattern, build in _SPECIAL:
            m = pattern.match(clause)
            if m:
                return build(m)
        negated, positive = False, clause
        for pattern, repl in _NEGATIONS:
            if pattern.match(positive):
                negated, positive = True, pattern.sub(repl, positive, count=1)
                break
        if negated:
            positive = _NEG_TAIL.sub("", positive)
        for pattern, build in _RULES:
            m = pattern.match(positive)
            if m:
                out = build(m)
                return [replace(c, negated=True) for c in out] if negated else out
        return []
