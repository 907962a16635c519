"""Input checks shared by the memory facade: what is accepted, what is cleaned, what is refused."""

from __future__ import annotations

import re
import unicodedata

from memory.errors import InvalidInput

__all__ = ["MAX_TEXT_CHARS", "MAX_ID_CHARS", "clean_text", "check_user_id"]

MAX_TEXT_CHARS = 20_000  # one turn; longer input is refused (split it), never silently truncated
MAX_ID_CHARS = 200
# C0/C1 control characters other than tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Matched with fullmatch: ``$`` would also match before a final "\n", letting "bob\n" through.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+\-]*")


def clean_text(text: object, *, name: str = "text") -> str:
    """Validate and normalize one turn's text.

    Refused (``InvalidInput``): non-strings, empty/whitespace-only text, text over
    :data:`MAX_TEXT_CHARS`, text with unpaired surrogates (what undecodable UTF-8 becomes).
    Cleaned (documented): control characters other than ``\\t``, ``\\n``, ``\\r`` are removed, and
    the text is NFC-normalized.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{name} is not valid UTF-8 ({exc}); decode it with the right encoding first") from exc
    if not isinstance(text, str):
        raise InvalidInput(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{name} contains characters that are not valid Unicode ({exc.reason}); "
                           "it was probably decoded from invalid UTF-8") from exc
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{name} is {len(text):,} characters; one turn may have at most {MAX_TEXT_CHARS:,}. "
                           "Split it into several turns.")
    text = unicodedata.normalize("NFC", _CONTROL.sub("", text))
    if not text.strip():
        raise InvalidInput(f"{name} is empty or whitespace only; nothing to remember")
    return text


def check_user_id(user_id: object, *, name: str = "user_id") -> str:
    """A user id: a non-empty str of letters, digits and ``_.@:+-``, at most :data:`MAX_ID_CHARS` long."""
    if not isinstance(user_id, str):
        raise InvalidInput(f"{name} must be a str, got {type(user_id).__name__}")
    if not user_id or len(user_id) > MAX_ID_CHARS or not _ID.fullmatch(user_id):
        raise InvalidInput(f"{name} {user_id!r} is not valid: use 1-{MAX_ID_CHARS} letters, digits or _.@:+- "
                           "(starting with a letter or digit; no spaces, newlines or control characters)")
    return user_id
