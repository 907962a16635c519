"""Extraction quality on real text nobody here wrote: the default extractor beside the pattern baseline.

Two sources, each scored without an LLM judge:

* **PrefEval** (``explicit_preference/*.json``): every item is one stated preference. A prediction is
  correct when it is a preference relation (likes, dislikes, favorite, diet, allergic_to, prefers_*)
  whose object shares a content word with the statement; recall = items with at least one correct
  prediction. Any other prediction counts against precision.
* **LoCoMo** (``locomo/locomo10.json``): every turn is extracted as its speaker's own statement. The
  session ``observation`` annotations ("Caroline moved to ...", cited by turn id) are the gold facts,
  as far as our relations cover them: an observation about the turn's speaker whose wording names a
  relation group (a keyword table below, independent of either extractor) is one gold item. A
  prediction is correct when a gold item of the same turn has its relation group and shares a content
  word with the observation. Precision is a lower bound: the annotation does not list every true fact.

Overall figures pool both sources (micro-averaged). Per-relation and per-dataset tables print above
the JSON line.

    python bench/extraction.py [ROOT] [--limit N] [--show-misses N] [--json]
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA, load_prefeval, require  # noqa: E402
from memory.extraction import Candidate, Extractor, PatternExtractor  # noqa: E402

PREFERENCE_RELATIONS = frozenset({"likes", "dislikes", "favorite", "diet", "allergic_to", "prefers_verbosity",
                                  "prefers_formality", "prefers_expertise"})

# Our relations folded into groups the LoCoMo observations can be matched against.
GROUP = {
    "lives_in": "place", "from": "place", "works_as": "work", "works_at": "work", "studies": "study",
    "studies_at": "study", "likes": "likes", "favorite": "likes", "dislikes": "dislikes", "has_pet": "pet",
    "has_child": "family", "has_sibling": "family", "partner": "family", "family": "family", "mother": "family",
    "father": "family", "knows": "family", "plans": "plans", "goal": "plans", "diet": "diet",
    "allergic_to": "diet", "name": "identity", "age": "identity",
}

# Gold: which relation group an observation's wording states (third person: "Melanie loves ...").
_GOLD = [(g, re.compile(p, re.IGNORECASE)) for g, p in (
    ("place", r"\b(?:lives?|living|moved|moving|relocat\w+|resides?) (?:in|to|back to)\b|\bis from\b|"
              r"\bgrew up in\b|\bwas born in\b|\bhometown\b"),
    ("work", r"\bworks? (?:as|at|for|in)\b|\bjob (?:as|at)\b|\bcareer (?:as|in)\b|\bemployed\b|\bhired\b|"
             r"\bis an? (?:\w+ )?(?:teacher|nurse|engineer|artist|counsel+or|writer|painter|musician|chef|doctor)\b"),
    ("study", r"\bstud(?:y|ies|ying)\b|\bmajor\w*\b|\bdegree in\b|\bstudent\b"),
    ("likes", r"\b(?:loves|enjoys|likes|prefers|adores)\b|\bfan of\b|\bpassionate about\b|\bis into\b|"
              r"\bfavou?rite\b|\bfond of\b|\bhobb(?:y|ies)\b|\binterested in\b"),
    ("dislikes", r"\bdislikes?\b|\bhates?\b|\bcan't stand\b|\bdoes(?:n't| not) (?:like|enjoy)\b|\bnot a fan\b"),
    ("pet", r"\b(?:has|adopted|got|owns) (?:a |an |two |three |another |\d+ )?(?:\w+ )?(?:dog|cat|pet|puppy|kitten|"
            r"turtle|guinea pig|snake|horse|rabbit|bird|fish)(?:s|es)?\b"),
    ("family", r"\b(?:has|have) (?:a |an |two |three |four |\d+ )?(?:\w+ )?(?:kids|children|sons?|daughters?|sisters?|"
               r"brothers?|husband|wife|partner|siblings?)\b|\bmarried\b"),
    ("plans", r"\bplans? to\b|\bplanning\b|\bwants? to\b|\bhop(?:e|es|ing) to\b|\bdreams? (?:of|to)\b|"
              r"\bgoal\b|\baims? to\b|\bis going to\b|\bintends? to\b"),
    ("diet", r"\bvegetarian\b|\bvegan\b|\ballerg\w+\b|\bdiet\b"),
)]

_STOP = frozenset((
    "a an the and or but of to in on at for with from by as is are was were be been being it its this that these "
    "those i me my we our you your he she they them his her their very really so just also more most some any "
    "all not no do does did have has had can could would should will about into over than then there here what "
    "which who whom how when where why like love likes loves enjoy enjoys prefer prefers").split())


def content_words(text: str) -> set[str]:
    """Lower-case words minus stop words, with a crude plural/-ing fold (so "hikes" meets "hiking")."""
    words = set()
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in _STOP or len(w) < 3:
            continue
        for suffix in ("ing", "es", "s"):
            if w.endswith(suffix) and len(w) - len(suffix) >= 3:
                w = w[: -len(suffix)]
                break
        words.add(w)
    return words


def overlaps(candidate: Candidate, text: str) -> bool:
    return bool(content_words(candidate.object) & content_words(text))


@dataclass
class Tally:
    """Counts per relation (predictions, correct ones) and per gold group (items, found)."""

    predicted: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    gold: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    misses: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    seconds: float = 0.0
    texts: int = 0

    def precision(self) -> float:
        n = sum(self.predicted.values())
        return sum(self.correct.values()) / n if n else 0.0

    def recall(self) -> float:
        n = sum(self.gold.values())
        return sum(self.found.values()) / n if n else 0.0

    def merged(self, other: "Tally") -> "Tally":
        return Tally(self.predicted + other.predicted, self.correct + other.correct, self.gold + other.gold,
                     self.found + other.found, seconds=self.seconds + other.seconds, texts=self.texts + other.texts)


def _timed(extractor: Extractor, text: str, tally: Tally) -> list[Candidate]:
    start = time.perf_counter()
    out = [c for c in extractor.extract(text, role="user") if c.subject == "user" and not c.negated]
    tally.seconds += time.perf_counter() - start
    tally.texts += 1
    return out


def score_prefeval(extractor: Extractor, statements: list[str]) -> Tally:
    tally = Tally()
    for text in statements:
        hit = False
        for c in _timed(extractor, text, tally):
            tally.predicted[c.relation] += 1
            if c.relation in PREFERENCE_RELATIONS and overlaps(c, text):
                tally.correct[c.relation] += 1
                hit = True
            else:
                tally.wrong.append(f"{text!r} -> {c.relation} {c.object!r}")
        tally.gold["preference"] += 1
        tally.found["preference"] += hit
        if not hit:
            tally.misses.append(text)
    return tally


@dataclass(frozen=True)
class LocomoTurn:
    text: str
    gold: tuple[tuple[str, str], ...]  # (group, observation text) about this turn's speaker


def load_locomo_turns(path: Path) -> list[LocomoTurn]:
    """Every turn with text, with the observations that cite it and are about its speaker, grouped."""
    raw = json.loads(require(path, "LoCoMo (locomo10.json)").read_text())
    turns: list[LocomoTurn] = []
    for conv in raw:
        cited: dict[tuple[str, str], list[str]] = defaultdict(list)  # (speaker, dia_id) → observations
        for session in conv.get("observation", {}).values():
            for speaker, items in session.items():
                for item in items:
                    text, ids = item[0], item[1] if isinstance(item[1], list) else [item[1]]
                    for dia in ids:
                        cited[(speaker, str(dia).strip())].append(text)
        dialogue = conv["conversation"]
        for key in sorted(k for k in dialogue if re.fullmatch(r"session_\d+", k)):
            for t in dialogue[key]:
                text = (t.get("text") or "").strip()
                if not text:
                    continue
                gold = tuple((g, obs) for obs in cited.get((t["speaker"], t["dia_id"]), [])
                             for g, rx in _GOLD if rx.search(obs))
                turns.append(LocomoTurn(text, gold))
    return turns


def score_locomo(extractor: Extractor, turns: list[LocomoTurn]) -> Tally:
    tally = Tally()
    for turn in turns:
        predicted = _timed(extractor, turn.text, tally)
        for group, obs in turn.gold:
            tally.gold[group] += 1
            if any(GROUP.get(c.relation) == group and overlaps(c, obs) for c in predicted):
                tally.found[group] += 1
            else:
                tally.misses.append(f"{turn.text!r} ~ {obs!r} [{group}]")
        for c in predicted:
            tally.predicted[c.relation] += 1
            if any(GROUP.get(c.relation) == g and overlaps(c, obs) for g, obs in turn.gold):
                tally.correct[c.relation] += 1
            else:
                tally.wrong.append(f"{turn.text!r} -> {c.relation} {c.object!r}")
    return tally


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f} ({a}/{b})" if b else "-"


def relation_rows(new: Tally, base: Tally) -> list[list[Any]]:
    rows = []
    for rel in sorted(set(new.predicted) | set(base.predicted)):
        rows.append([rel, _ratio(new.correct[rel], new.predicted[rel]), _ratio(base.correct[rel], base.predicted[rel])])
    return rows


def group_rows(new: Tally, base: Tally) -> list[list[Any]]:
    return [[g, _ratio(new.found[g], new.gold[g]), _ratio(base.found[g], base.gold[g])] for g in sorted(new.gold)]


def figures(t: Tally) -> dict[str, float]:
    return {"precision": round(t.precision(), 3), "recall": round(t.recall(), 3)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("root", nargs="?", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    p.add_argument("--limit", type=int, default=0, help="at most N items per dataset (0 = all)")
    p.add_argument("--show-misses", type=int, default=0, help="print N missed items and N unmatched predictions")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    statements = [i.preference for i in load_prefeval(args.root / "prefeval")]
    turns = load_locomo_turns(args.root / "locomo" / "locomo10.json")
    if args.limit:
        statements, turns = statements[: args.limit], turns[: args.limit]

    from memory.extraction import default_extractor

    extractor, baseline = default_extractor(), PatternExtractor()
    name = type(extractor).__name__
    extractor.extract("I live in Oslo.")  # load its models outside the timed runs
    results: dict[str, tuple[Tally, Tally]] = {
        "prefeval": (score_prefeval(extractor, statements), score_prefeval(baseline, statements)),
        "locomo": (score_locomo(extractor, turns), score_locomo(baseline, turns)),
    }
    for ds, (new, base) in results.items():
        print_table(f"{ds}: precision per predicted relation", ["relation", name, "PatternExtractor"],
                    relation_rows(new, base))
        print_table(f"{ds}: recall per gold group", ["group", name, "PatternExtractor"], group_rows(new, base))
        if args.show_misses:
            print(f"-- {ds}: missed by {name}:", *new.misses[: args.show_misses], sep="\n  ")
            print(f"-- {ds}: unmatched predictions of {name}:", *new.wrong[: args.show_misses], sep="\n  ")
    new_all = results["prefeval"][0].merged(results["locomo"][0])
    base_all = results["prefeval"][1].merged(results["locomo"][1])
    rows = [[ds, *figures(n).values(), *figures(b).values()] for ds, (n, b) in results.items()]
    rows.append(["overall", *figures(new_all).values(), *figures(base_all).values()])
    print_table("extraction: precision / recall", ["data", f"{name} P", "R", "pattern P", "R"], rows)
    summary: dict[str, Any] = {
        **figures(new_all), "baseline": figures(base_all), "extractor": name,
        "ms_per_text": round(1000 * new_all.seconds / max(new_all.texts, 1), 2),
        "baseline_ms_per_text": round(1000 * base_all.seconds / max(base_all.texts, 1), 3),
    }
    for ds, (n, b) in results.items():
        summary[ds] = {**figures(n), "baseline": figures(b), "items": sum(n.gold.values()) if ds == "locomo" else len(statements)}
    if args.json:
        emit_json(summary)


if __name__ == "__main__":
    main()
