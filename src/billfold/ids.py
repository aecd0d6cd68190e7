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


# Each byte below 248 (= 4 x 62) stands for one character, four bytes each; the bytes
# 248-255 are dropped and drawn again (rejection: no modulo bias).
_TO_CHARACTER = bytes(ord(_ALPHABET[b % 62]) if b < 248 else 0 for b in range(256))
_REJECTED = bytes(range(248, 256))


def new_id(prefix: str, length: int = 24) -> str:
    """`prefix`_ and `length` base62 characters, each drawn uniformly and independently."""
    chars = b""
    while len(chars) < length:
        # About 3 % of bytes are dropped: a few spare bytes make a second draw rare.
        need = length - len(chars)
        chars += _entropy.take(need + 4).translate(_TO_CHARACTER, _REJECTED)[:need]
    return f"{prefix}_{chars.decode()}"
