"""Text at the edges: what a request string may hold so that storing it is harmless.

Two rules. Every string in a request body must be storable and readable back
(`unstorable_reason`: no NUL, which PostgreSQL text cannot hold, and no lone surrogate,
which cannot be encoded as UTF-8, so every later response containing it would fail).
Free text that people read later (names, addresses, descriptions, reasons: on invoices,
pages and listings) must also be `CleanText`: no control characters and no invisible
formatting characters, above all the bidirectional overrides that make an invoice show
text in another order than it was typed.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator

_SURROGATE = re.compile("[\ud800-\udfff]")

# Zero-width (non-)joiners are format characters too, but Persian, Indic scripts and emoji
# sequences need them to be written correctly; they cannot reorder text.
_ALLOWED_FORMAT = {"\u200c", "\u200d"}
# Cc: C0/C1 controls (tab and newline included: no field is multi-line). Cf: format
# characters (bidi embeddings, overrides and isolates, marks, BOM, invisible operators).
# Cs: surrogates. Zl/Zp: the line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def unstorable_reason(text: str) -> str | None:
    """Why `text` cannot be stored and read back, or None."""
    if "\x00" in text:
        return "strings must not contain NUL characters"
    if _SURROGATE.search(text):
        return "strings must not contain unpaired surrogates (\\ud800-\\udfff)"
    return None


def hidden_character(text: str) -> str | None:
    """The first control, format or separator character in `text`, or None."""
    if text.isascii() and text.isprintable():
        return None
    for char in text:
        if char not in _ALLOWED_FORMAT and unicodedata.category(char) in _REFUSED_CATEGORIES:
            return char
    return None


def refuse_hidden(value: str) -> str:
    char = hidden_character(value)
    if char is not None:
        raise ValueError(
            f"must not contain control or invisible formatting characters (found U+{ord(char):04X})"
        )
    return value


CleanText = Annotated[str, AfterValidator(refuse_hidden)]
"""A string with no control, bidi-override or other invisible formatting characters."""
