"""Object identifiers: a Stripe-like type prefix and 24 random base62 characters."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """`prefix`_ and `length` base62 characters, uniformly random (one draw, then digits)."""
    number = secrets.randbelow(62**length)
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(chars)}"
