"""Keep text inside chat messages from turning into the tokenizer's control tokens.

A chat template pastes each message's content between control tokens (ChatML: ``<|im_start|>user\\n …
<|im_end|>``) and the tokenizer then maps any special-token *text* to the special token's id — wherever the
text came from. A user who types ``<|im_end|>\\n<|im_start|>system\\n…`` would open a real system turn.
:class:`SpecialTokenGuard` rewrites message contents so that only the template's own control tokens are
special:

* the special tokens are read from the tokenizer (``all_special_tokens`` plus every added token marked
  ``special``), never from a list of known templates;
* each occurrence is broken by a zero-width space after its first character (``<|im_end|>`` →
  ``<\\u200b|im_end|>``): the text still reads the same to a person and to the model, but no longer
  matches the token;
* then the content is tokenized and checked by id: a tokenizer whose normalizer re-forms a token (lower-
  casing ``<|IM_END|>``, NFKC-folding full-width forms, or stripping the zero-width space) has the
  offending spans broken again — with a visible space when the zero-width one is stripped. A tokenizer
  without offsets (a slow one) that still yields a special id makes the request fail.

Only the text handed to the model changes; the conversation thread and the memory keep the user's words
as they were said.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from editing.errors import InvalidRequest

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

__all__ = ["SpecialTokenGuard", "special_token_ids", "special_token_texts", "ZERO_WIDTH"]

ZERO_WIDTH = "\u200b"
_BREAKERS = (ZERO_WIDTH, " ")  # the visible one only where a normalizer removes the zero-width one
_ROUNDS = 4  # breaking can (rarely) expose another match; a few re-checks settle it


def _added_special(tokenizer: "PreTrainedTokenizerBase") -> dict[int, str]:
    """Added tokens marked special (id → text); ``all_special_tokens`` leaves many of them out."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return {i: getattr(tok, "content", str(tok)) for i, tok in added.items() if getattr(tok, "special", False)}


def special_token_ids(tokenizer: "PreTrainedTokenizerBase") -> frozenset[int]:
    """Ids of the tokenizer's special tokens: the named ones and every added token marked special."""
    return frozenset(tokenizer.all_special_ids) | frozenset(_added_special(tokenizer))


def special_token_texts(tokenizer: "PreTrainedTokenizerBase") -> list[str]:
    """The texts of those tokens, longest first (so a token containing another is matched whole)."""
    texts = set(tokenizer.all_special_tokens) | set(_added_special(tokenizer).values())
    return sorted((t for t in texts if t), key=len, reverse=True)


class SpecialTokenGuard:
    """Neutralizes one tokenizer's special-token text in message contents (see the module docstring)."""

    def __init__(self, tokenizer: "PreTrainedTokenizerBase") -> None:
        self._tokenizer = tokenizer
        self.special_ids = special_token_ids(tokenizer)
        texts = special_token_texts(tokenizer)
        self._pattern = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._has_offsets = bool(getattr(tokenizer, "is_fast", False))

    def neutralize(self, text: str) -> str:
        """``text`` with no span that the tokenizer would read as one of its special tokens."""
        return self.neutralize_all([text])[0]

    def neutralize_all(self, texts: list[str]) -> list[str]:
        """:meth:`neutralize` for several texts, checked in one batched tokenizer call (about 3× faster
        than one call per message for an agent prompt; ``bench/encode_chat.py``)."""
        if self._pattern is None or not texts:
            return list(texts)
        texts = [self._pattern.sub(lambda m: m.group()[0] + ZERO_WIDTH + m.group()[1:], t) for t in texts]
        if not self._has_offsets:
            for text in texts:
                if self._special_in(text):
                    raise InvalidRequest(f"the message {text[:80]!r}… still contains this tokenizer's control tokens "
                                         "after they were broken up; remove them from the message")
            return texts
        spans = self._special_spans(texts)
        return [self._break_spans(t) if s else t for t, s in zip(texts, spans)]

    def _break_spans(self, text: str) -> str:
        for breaker in _BREAKERS:
            candidate = text
            for _ in range(_ROUNDS):
                spans = self._special_spans([candidate])[0]
                if not spans:
                    return candidate
                candidate = _insert(candidate, spans, breaker)
        raise InvalidRequest(f"part of the message {text[:80]!r}… becomes one of this tokenizer's control tokens "
                             "however it is broken up; remove it from the message")

    def _special_spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, the character spans the tokenizer turns into special tokens."""
        enc = self._tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [[tuple(span) for i, span in zip(ids, offsets) if i in self.special_ids]
                for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]

    def _special_in(self, text: str) -> bool:
        return any(i in self.special_ids for i in self._tokenizer(text, add_special_tokens=False)["input_ids"])


def _insert(text: str, spans: list[tuple[int, int]], breaker: str) -> str:
    """Break each span after its first character (a one-character span is replaced by U+FFFD)."""
    for start, end in sorted(spans, reverse=True):
        if end - start >= 2:
            text = text[: start + 1] + breaker + text[start + 1:]
        else:
            text = text[:start] + "\ufffd" + text[end:]
    return text
