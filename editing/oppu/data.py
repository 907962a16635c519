"""A user's training examples, in chat form, from plain inputs: their dialogue and their current facts.

Three sources (OPPU's "the user's own history"):

* **own turns** — every user turn of the dialogue is a continuation target, with the turns before it as
  context, so the adapter learns how this user writes;
* **rated replies** — assistant replies the user rated up (``feedback == 1``) are targets after their context;
* **facts** — one question/answer pair per trained chat question of each current fact the knowledge-editing
  templates know (:mod:`editing.fact_edits`): "Where do I live?" → "You live in Lisbon.", so the adapter
  also answers them closed-book.

Only the **current** facts are to be passed in: the caller leaves superseded and retracted facts out (a fact
with ``valid_to`` set is skipped here as well), and a forgotten user has no history to pass. ``editing``
does not import ``memory``: a turn is a mapping with ``role``/``content`` (and optional ``feedback``), a
fact is read by its fields.

:func:`encode` renders an example with the tokenizer's chat template, as serving does, and masks the labels
of everything before the target: the loss is on the target span only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editing.errors import InvalidRequest
from editing.fact_edits import TRAINED_QUESTIONS, edit_request_for

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

__all__ = ["IGNORE", "TrainExample", "Encoded", "own_turn_examples", "rated_reply_examples", "fact_examples",
           "build_examples", "encode"]

IGNORE = -100  # the label of a token that carries no loss (PyTorch's cross-entropy ignore_index)
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TrainExample:
    """``context`` (chat turns) followed by one ``target`` turn said by ``role``; ``source`` says why."""

    context: tuple[tuple[str, str], ...]  # (role, content) pairs before the target
    role: str  # "user" (an own turn) or "assistant" (a rated reply, a fact's answer)
    target: str
    source: str  # "own_turn" | "rated_reply" | "fact"

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise InvalidRequest(f"a target is said by 'user' or 'assistant', got role {self.role!r}")
        if not isinstance(self.target, str) or not self.target.strip():
            raise InvalidRequest(f"target must be a non-empty string, got {self.target!r}")
        object.__setattr__(self, "context", tuple((str(r), str(c)) for r, c in self.context))

    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.context] + [{"role": self.role, "content": self.target}]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one rendered example and its labels (``IGNORE`` before the target)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def _turns(dialogue: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, Any]]:
    """(role, content, feedback) per turn, checked."""
    if isinstance(dialogue, (str, Mapping)):
        raise InvalidRequest("dialogue must be a sequence of turns ({'role': ..., 'content': ...}), not one "
                             f"{type(dialogue).__name__}")
    out = []
    for i, turn in enumerate(dialogue):
        role, content = turn.get("role"), turn.get("content")
        if role not in _ROLES or not isinstance(content, str):
            raise InvalidRequest(f"dialogue[{i}] must have role in {_ROLES} and str content, got {dict(turn)!r}")
        out.append((role, content, turn.get("feedback")))
    return out


def _context(turns: list[tuple[str, str, Any]], i: int, context_turns: int) -> tuple[tuple[str, str], ...]:
    """Up to ``context_turns`` turns before turn ``i``, with a system turn kept if the dialogue opens with one."""
    before = [(r, c) for r, c, _ in turns[max(0, i - context_turns):i] if r != "system" and c.strip()]
    system = [(r, c) for r, c, _ in turns[:1] if r == "system" and i > 0]
    return tuple(system + before)


def own_turn_examples(dialogue: Sequence[Mapping[str, Any]], *, context_turns: int = 4) -> list[TrainExample]:
    """Each non-empty user turn as a target after the (up to ``context_turns``) turns before it."""
    turns = _turns(dialogue)
    return [TrainExample(_context(turns, i, context_turns), "user", c.strip(), "own_turn")
            for i, (r, c, _) in enumerate(turns) if r == "user" and c.strip()]


def rated_reply_examples(dialogue: Sequence[Mapping[str, Any]], *, context_turns: int = 4) -> list[TrainExample]:
    """Each assistant reply with ``feedback == 1`` as a target after the turns before it."""
    turns = _turns(dialogue)
    return [TrainExample(_context(turns, i, context_turns), "assistant", c.strip(), "rated_reply")
            for i, (r, c, fb) in enumerate(turns) if r == "assistant" and fb == 1 and c.strip()]


def fact_examples(facts: Sequence[Any]) -> list[TrainExample]:
    """Chat Q/A pairs for the current facts the edit templates know; the held-out questions are left out.

    A fact with ``valid_to`` set (superseded or retracted) is skipped; so is one ``edit_request_for`` declines
    (not about the user, low confidence, no template).
    """
    out = []
    for fact in facts:
        if getattr(fact, "valid_to", None) is not None:
            continue
        request = edit_request_for(fact)
        if request is None:
            continue
        answer = f"{request.answer_prefix} {request.target_new}".strip() + "."
        out.extend(TrainExample((("user", q),), "assistant", answer, "fact")
                   for q in request.chat_questions[:TRAINED_QUESTIONS])
    return out


def build_examples(dialogue: Sequence[Mapping[str, Any]] = (), facts: Sequence[Any] = (), *,
                   context_turns: int = 4) -> list[TrainExample]:
    """All of a user's examples: own turns, rated-up replies, then their current facts' Q/A pairs."""
    if context_turns < 0:
        raise InvalidRequest(f"context_turns must be >= 0, got {context_turns}")
    return (own_turn_examples(dialogue, context_turns=context_turns)
            + rated_reply_examples(dialogue, context_turns=context_turns) + fact_examples(facts))


def encode(tokenizer: "PreTrainedTokenizerBase", example: TrainExample, max_tokens: int) -> Encoded:
    """Render ``example`` with the chat template; labels only on the target turn (its text and end-of-turn).

    The rendered text is split where the target's content starts (its last occurrence, which is the final
    turn), and the two parts are tokenized apart, so the target's tokens are the ones a reply would produce.
    A too-long example keeps its target (cut to ``max_tokens`` when it alone is longer) and loses the start
    of its context.
    """
    text = tokenizer.apply_chat_template(example.messages(), tokenize=False)
    cut = text.rfind(example.target)
    if cut < 0:
        raise InvalidRequest(f"the chat template changed the target text; cannot find {example.target[:60]!r}")
    prefix = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
    target = tokenizer(text[cut:], add_special_tokens=False)["input_ids"][:max_tokens]
    prefix = prefix[max(0, len(prefix) + len(target) - max_tokens):]
    return Encoded(tuple(prefix + target), tuple([IGNORE] * len(prefix) + target))
