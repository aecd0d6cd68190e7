"""Object identifiers: a Stripe-like type prefix and 24 random base62 characters."""

from __future__ import annotations

import os
import string
import threading

_ALPHABET = string.ascii_letters + string.digits
_BUFFER_BYTES = 4096


class _Entropy(threading.local):
    """The operating system's randomness (os.urandom, as `secrets` uses), read 4 KiB at a
    time: one system call per ~200 ids instead of one or more per id. A forked child starts
    with an empty buffer (`_forget_after_fork`): it must not reuse its parent's bytes."""

    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0
        self.generation = _generation

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.buffer) or self.generation != _generation:
            self.buffer, self.offset, self.generation = os.urandom(_BUFFER_BYTES), 0, _generation
        chunk = self.buffer[self.offset : self.offset + size]
        self.offset += size
        return chunk


# Bumped in a forked child, so every thread's buffer there is read afresh (a check of
# os.getpid() per id was a system call per id, dear on a virtual machine).
_generation = 0


def _forget_after_fork() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forget_after_fork)
_entropy = _Entropy()


def _randbelow(n: int) -> int:
    """Uniform in [0, n): random bits of n's length, drawn again while out of range."""
    bits = n.bit_length()
    size = (bits + 7) // 8
    excess = size * 8 - bits
    while True:
        number = int.from_bytes(_entropy.take(size)) >> excess
        if number < n:
            return number


def new_id(prefix: str, length: int = 24) -> str:
    """`prefix`_ and `length` base62 characters, uniformly random (one draw, then digits)."""
    number = _randbelow(62**length)
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(chars)}"
