"""Object ids: unique, base62, uniformly drawn, and never shared by a forked process."""

from __future__ import annotations

import os
import string
from collections import Counter

from billfold.ids import new_id

ALPHABET = set(string.ascii_letters + string.digits)


def test_ids_have_the_prefix_the_length_and_the_base62_alphabet() -> None:
    for length in (8, 20, 24):
        value = new_id("txn", length)
        prefix, _, body = value.partition("_")
        assert prefix == "txn"
        assert len(body) == length
        assert set(body) <= ALPHABET


def test_ids_do_not_repeat_and_every_character_is_about_equally_likely() -> None:
    ids = [new_id("x") for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    counts = Counter("".join(i[2:] for i in ids))
    assert set(counts) == ALPHABET
    expected = 20_000 * 24 / 62  # about 7,742 of each
    # A biased draw (say, modulo bias or a stuck byte) moves some character far off.
    assert all(abs(n - expected) < 0.06 * expected for n in counts.values())


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    new_id("warm")  # the parent has buffered randomness the child inherits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_id("c") for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_id("c") for _ in range(50)]
    assert len(child) == 50
    assert not set(child) & set(parent)
