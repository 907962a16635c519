"""Loading the public evaluation sets the retrieval benches use (LoCoMo, PrefEval), as typed records.

The data live beside the project in ``../shared/data`` (never copied into the repo: CC BY-NC 4.0).
Every loader takes a path and exits with a clear message when it is missing.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "DEFAULT_DATA",
    "LOCOMO_CATEGORIES",
    "LocomoTurn",
    "LocomoQA",
    "LocomoConversation",
    "PrefItem",
    "McqItem",
    "require",
    "load_locomo",
    "load_prefeval",
    "load_prefeval_mcq",
    "load_filler",
    "PrecomputedEmbedder",
    "parse_overrides",
]

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

# The mapping of LoCoMo's numeric ``category`` as the data README states it. It agrees with the data:
# category 1 items cite 3.1 evidence turns on average (multi-hop), 4 is the largest (841, single-hop,
# as the paper's 36 % share), 5 items carry ``adversarial_answer``.
LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}

_SESSION_KEY = re.compile(r"session_(\d+)")
_DIA_ID = re.compile(r"D:?(\d+):(\d+)")


def require(path: Path, what: str) -> Path:
    """``path`` if it exists; otherwise exit with a message saying where the data should be."""
    if not path.exists():
        sys.exit(f"{what} not found at {path}. The evaluation data sit in ../shared/data (see its README); pass the path.")
    return path


@dataclass(frozen=True)
class LocomoTurn:
    dia_id: str  # "D<session>:<turn>", 1-based
    speaker: str
    text: str  # "Speaker: words [shares a photo of ...]" — what gets indexed
    session: int
    at: datetime  # the session's date and time (UTC; the data carry no zone)


@dataclass(frozen=True)
class LocomoQA:
    question: str
    evidence: tuple[str, ...]  # normalized dia_ids that exist in the conversation
    category: int
    answer: str = ""  # the gold answer ("" for category 5, whose items carry adversarial_answer instead)


@dataclass(frozen=True)
class LocomoConversation:
    sample_id: str
    speakers: tuple[str, str]
    turns: tuple[LocomoTurn, ...]
    qa: tuple[LocomoQA, ...]
    skipped_no_evidence: int  # QA items with no (valid) evidence id
    dropped_evidence_ids: int  # evidence ids that name no turn of the conversation


def parse_locomo_time(text: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` → aware UTC datetime."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def _turn_text(raw: dict) -> str:
    text = f"{raw['speaker']}: {raw.get('text', '').strip()}"
    caption = raw.get("blip_caption")
    if caption:
        caption = re.sub(r"^an? photo(graphy)? of ", "", caption.strip())
        text += f" [shares a photo of {caption}]"
    return text


def _evidence_ids(raw: list[str]) -> list[str]:
    """Normalize the few malformed ids ("D8:6; D9:17", "D:11:26", "D30:05") to ``D<s>:<t>``."""
    out: list[str] = []
    for chunk in raw:
        for m in _DIA_ID.finditer(chunk):
            out.append(f"D{int(m.group(1))}:{int(m.group(2))}")
    return out


def _conversation(raw: dict) -> LocomoConversation:
    conv = raw["conversation"]
    sessions = sorted(int(m.group(1)) for k in conv if (m := _SESSION_KEY.fullmatch(k)))
    turns = tuple(
        LocomoTurn(t["dia_id"], t["speaker"], _turn_text(t), n, parse_locomo_time(conv[f"session_{n}_date_time"]))
        for n in sessions
        for t in conv[f"session_{n}"]
    )
    known = {t.dia_id for t in turns}
    qa: list[LocomoQA] = []
    skipped = dropped = 0
    for item in raw["qa"]:
        ids = _evidence_ids(item.get("evidence") or [])
        valid = tuple(dict.fromkeys(i for i in ids if i in known))
        dropped += len(ids) - len([i for i in ids if i in known])
        if not valid:
            skipped += 1
            continue
        qa.append(LocomoQA(item["question"], valid, int(item["category"]), str(item.get("answer", ""))))
    return LocomoConversation(raw["sample_id"], (conv["speaker_a"], conv["speaker_b"]), turns, tuple(qa), skipped, dropped)


def load_locomo(path: Path) -> list[LocomoConversation]:
    """Every conversation of ``locomo10.json``, turns in session order."""
    raw = json.loads(require(path, "LoCoMo (locomo10.json)").read_text())
    return [_conversation(c) for c in raw]


@dataclass(frozen=True)
class PrefItem:
    topic: str  # file stem, e.g. "travel_hotel"
    preference: str  # the user's stated preference (one turn)
    question: str  # a later question whose good answer depends on it


def load_prefeval(root: Path) -> list[PrefItem]:
    """All explicit-preference items, topics in file-name order."""
    folder = require(root / "explicit_preference", "PrefEval explicit_preference/")
    items: list[PrefItem] = []
    for file in sorted(folder.glob("*.json")):
        for raw in json.loads(file.read_text()):
            items.append(PrefItem(file.stem, raw["preference"].strip(), raw["question"].strip()))
    return items


@dataclass(frozen=True)
class McqItem(PrefItem):
    """A PrefEval item with four candidate replies (``mcq_options/``); ``options[0]`` respects the preference."""

    explanation: str  # why the right reply is right (the data's own words)
    options: tuple[str, ...]  # as in the file: the first is the correct one (shuffle before scoring)


def load_prefeval_mcq(root: Path) -> list[McqItem]:
    """All multiple-choice items (``mcq_options/*.json``), topics in file-name order, options as stored."""
    folder = require(root / "mcq_options", "PrefEval mcq_options/")
    items: list[McqItem] = []
    for file in sorted(folder.glob("*.json")):
        for raw in json.loads(file.read_text()):
            options = tuple(str(o).strip() for o in raw["classification_task_options"])
            if len(options) < 2:
                sys.exit(f"{file}: an item has {len(options)} option(s); a multiple-choice item needs at least 2")
            items.append(McqItem(file.stem, raw["preference"].strip(), raw["question"].strip(),
                                 str(raw.get("explanation", "")).strip(), options))
    return items


def load_filler(root: Path) -> list[list[tuple[str, str]]]:
    """PrefEval's unrelated filler conversations as ``[(role, text), ...]`` each."""
    raw = json.loads(require(root / "filtered_inter_turns.json", "PrefEval filtered_inter_turns.json").read_text())
    return [[(t["role"], t["content"]) for t in c["conversation"] if t["content"].strip()] for c in raw]


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["dense=0.5", "fusion=rrf", "candidates_per_k=4"]`` → RetrievalWeights overrides (int, float or str)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--weight takes NAME=VALUE (e.g. recency=0.1), got {pair!r}")
        for cast in (int, float, str):
            try:
                out[name.strip()] = cast(value)
                break
            except ValueError:
                continue
    return out


class PrecomputedEmbedder:
    """An :class:`memory.embeddings.Embedder` that embeds a known set of texts once, in one batch.

    Benches store thousands of turns one ``remember`` at a time; embedding them one by one would
    dominate the run. Vectors are the base model's own; unknown texts fall through to it.
    """

    def __init__(self, base: "Any", texts: list[str]) -> None:
        self.dim, self.name, self._base = base.dim, base.name, base
        unique = list(dict.fromkeys(texts))
        self._vectors = dict(zip(unique, base.embed(unique)))

    def embed(self, texts: "Sequence[str]") -> "np.ndarray":
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self._base.embed(missing)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32)
