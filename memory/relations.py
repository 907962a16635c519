"""The relation schema of the knowledge graph: which relations are functional, which are preferences.

A *slot* is what one current edge may occupy. Two candidate edges in the same slot conflict, and the
newer one supersedes the older (``valid_to`` is set, nothing is deleted):

* a functional relation has one slot per ``(subject, relation)`` — ``lives_in`` holds one city;
  ``favorite`` is functional per category: one slot per ``(subject, "favorite", category)``
  (favorite food and favorite color are two slots);
* ``likes`` and ``dislikes`` share one slot per ``(subject, object)`` — a later "I hate coffee"
  closes an earlier "I love coffee" (a polarity flip);
* every other relation accumulates: its slot is the edge itself ``(subject, relation, object)``,
  so only re-asserting the same object touches it.

Subjects and objects are compared case-insensitively; they are stored as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "DIMENSIONS",
    "POLARITY_RELATIONS",
    "RELATIONS",
    "RelationSpec",
    "SlotKey",
    "canonical_category",
    "normalize_relation",
    "relation_spec",
    "slot_key",
]

RelationKind = Literal["fact", "preference"]

# Style preference dimensions: each is a pair of poles; the relation is ``prefers_<dimension>``.
DIMENSIONS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "verbosity": ("concise", "detailed"),
    "formality": ("casual", "formal"),
    "expertise": ("layperson", "expert"),
})

POLARITY_RELATIONS = frozenset({"likes", "dislikes"})


@dataclass(frozen=True, slots=True)
class RelationSpec:
    """How the graph treats one relation.

    ``functional``: a new value supersedes the current one in the same slot.
    ``kind``: the ``Fact.kind`` stamped on its edges.
    ``dimension``: for ``prefers_<dimension>``, the style dimension it sets (else None).
    ``polarity``: for ``likes``/``dislikes``, the ``Fact.polarity`` it carries (else None).
    ``per_category``: the category is part of the slot (``favorite``: one value per category).
    """

    name: str
    functional: bool
    kind: RelationKind = "fact"
    dimension: str | None = None
    polarity: Literal["likes", "dislikes"] | None = None
    per_category: bool = False


def _specs() -> dict[str, RelationSpec]:
    functional_facts = ("name", "age", "lives_in", "from", "works_as", "works_at", "studies", "studies_at",
                        "diet", "partner", "mother", "father")
    accumulating_facts = ("allergic_to", "has_pet", "has_sibling", "has_child", "family", "plans", "goal", "knows")
    specs = {n: RelationSpec(n, functional=True) for n in functional_facts}
    specs.update({n: RelationSpec(n, functional=False) for n in accumulating_facts})
    specs["favorite"] = RelationSpec("favorite", functional=True, kind="preference", per_category=True)
    for pol in ("likes", "dislikes"):
        specs[pol] = RelationSpec(pol, functional=False, kind="preference", polarity=pol)  # type: ignore[arg-type]
    for dim in DIMENSIONS:
        specs[f"prefers_{dim}"] = RelationSpec(f"prefers_{dim}", functional=True, kind="preference", dimension=dim)
    return specs


RELATIONS: Mapping[str, RelationSpec] = MappingProxyType(_specs())

# Spellings an extractor (or an LLM) may use → (relation, category implied by the spelling).
_ALIASES: Mapping[str, tuple[str, str | None]] = MappingProxyType({
    "is_named": ("name", None), "called": ("name", None), "first_name": ("name", None),
    "live_in": ("lives_in", None), "lives": ("lives_in", None), "location": ("lives_in", None),
    "resides_in": ("lives_in", None), "city": ("lives_in", None), "lives_at": ("lives_in", None),
    "is_from": ("from", None), "hometown": ("from", None), "born_in": ("from", None), "origin": ("from", None),
    "job": ("works_as", None), "occupation": ("works_as", None), "profession": ("works_as", None),
    "work_as": ("works_as", None), "is_a": ("works_as", None), "employer": ("works_at", None),
    "work_at": ("works_at", None), "works_for": ("works_at", None), "study": ("studies", None),
    "major": ("studies", None), "like": ("likes", None), "love": ("likes", None), "loves": ("likes", None),
    "enjoys": ("likes", None), "dislike": ("dislikes", None), "hates": ("dislikes", None),
    "allergy": ("allergic_to", None), "allergic": ("allergic_to", None), "pet": ("has_pet", None),
    "spouse": ("partner", None), "wife": ("partner", "wife"), "husband": ("partner", "husband"),
    "girlfriend": ("partner", "girlfriend"), "boyfriend": ("partner", "boyfriend"),
    "has_sister": ("has_sibling", "sister"), "has_brother": ("has_sibling", "brother"),
    "sister": ("has_sibling", "sister"), "brother": ("has_sibling", "brother"),
    "has_son": ("has_child", "son"), "has_daughter": ("has_child", "daughter"),
    "son": ("has_child", "son"), "daughter": ("has_child", "daughter"),
    "has_mother": ("mother", None), "has_father": ("father", None), "plan": ("plans", None),
    "goals": ("goal", None), "wants_to": ("goal", None),
})

_SNAKE = re.compile(r"[^a-z0-9]+")
_IE_NOUNS = frozenset({"movie", "cookie", "pie", "tie", "smoothie", "zombie", "rookie", "selfie", "brownie", "calorie",
                       "genie", "hippie", "indie", "veggie", "foodie", "aussie"})
_BRITISH = {"colour": "color", "flavour": "flavor", "favourite": "favorite", "jewellery": "jewelry",
            "programme": "program", "theatre": "theater"}


def canonical_category(category: str | None) -> str | None:
    """Lower-case, singular, American spelling: ``"Colours"`` → ``"color"``; blank → None."""
    if category is None:
        return None
    words = [w for w in _SNAKE.sub(" ", category.lower()).split() if w]
    if not words:
        return None
    last = words[-1]
    if last.endswith("ies") and last[:-1] in _IE_NOUNS:
        last = last[:-1]
    elif last.endswith("ies") and len(last) > 4:
        last = last[:-3] + "y"
    elif last.endswith(("ses", "shes", "ches", "xes")):
        last = last[:-2]
    elif last.endswith("s") and not last.endswith(("ss", "us", "is")) and len(last) > 3:
        last = last[:-1]
    words[-1] = last
    return " ".join(_BRITISH.get(w, w) for w in words)


def normalize_relation(raw: str) -> tuple[str, str | None]:
    """Map a relation as an extractor wrote it onto the schema → ``(relation, implied category)``.

    ``"Lives In"`` → ``("lives_in", None)``; ``"favourite_colour"`` → ``("favorite", "color")``;
    ``"has_sister"`` → ``("has_sibling", "sister")``. Unknown relations are kept as lower snake_case.
    """
    name = _SNAKE.sub("_", raw.strip().lower()).strip("_")
    name = name.replace("favourite", "favorite")
    if name in RELATIONS:
        return name, None
    if name in _ALIASES:
        return _ALIASES[name]
    if name.startswith(("favorite_", "favorite")) and name != "favorite":
        return "favorite", canonical_category(name.removeprefix("favorite").strip("_"))
    if name.startswith("prefers_") and name.removeprefix("prefers_") in DIMENSIONS:
        return name, None
    return name, None


def relation_spec(name: str) -> RelationSpec:
    """The spec of ``name``; an unknown relation is an accumulating (non-functional) fact."""
    spec = RELATIONS.get(name)
    return spec if spec is not None else RelationSpec(name, functional=False)


SlotKey = tuple[str, str, str, str]


def slot_key(subject: str, relation: str, obj: str, category: str | None) -> SlotKey:
    """The slot an edge occupies (see the module docstring); case-insensitive on every part."""
    subj = subject.casefold()
    if relation in POLARITY_RELATIONS:
        return (subj, "likes|dislikes", "", obj.casefold())
    spec = relation_spec(relation)
    cat = (category or "").casefold() if spec.per_category else ""
    if spec.functional:
        return (subj, relation, cat, "")
    return (subj, relation, cat, obj.casefold())
