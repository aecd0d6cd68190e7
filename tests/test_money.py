"""Amount parsing and rendering: decimals at the edges, integer micros inside."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billfold.money import from_micros, parse_amount, to_micros

CARD = {"decimals": 2, "minimum": Decimal(10), "maximum": Decimal(1_000_000)}
USAGE = {"decimals": 6, "minimum": Decimal("0.000001"), "maximum": Decimal(1_000_000)}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (25, Decimal(25)),
        ("49.99", Decimal("49.99")),
        (Decimal("10.00"), Decimal(10)),
        (Decimal("10.000"), Decimal(10)),  # trailing zeros are not extra precision
        (1_000_000, Decimal(1_000_000)),
    ],
)
def test_card_amounts_accepted(value: object, expected: Decimal) -> None:
    assert parse_amount(value, **CARD) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Decimal("10.001"), "at most 2 decimal places"),
        (Decimal("9.99"), "at least 10"),
        (0, "at least 10"),
        (-25, "at least 10"),
        (Decimal("1000000.01"), "at most 1000000"),
        (Decimal("1e400"), "at most 1000000"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        ("abc", "decimal number"),
        ("", "decimal number"),
        (True, "decimal number"),
        (None, "decimal number"),
        ([10], "decimal number"),
    ],
)
def test_card_amounts_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_amount(value, **CARD)


def test_usage_amounts_take_six_decimals_and_no_more() -> None:
    assert parse_amount(Decimal("0.000001"), **USAGE) == Decimal("0.000001")
    assert parse_amount("12.345678", **USAGE) == Decimal("12.345678")
    with pytest.raises(ValueError, match="at most 6 decimal places"):
        parse_amount(Decimal("0.0000011"), **USAGE)
    with pytest.raises(ValueError, match="at least"):
        parse_amount(Decimal("0.0000001"), **USAGE)


@pytest.mark.parametrize(
    ("micros", "text"),
    [(25_000_000, "25"), (49_990_000, "49.99"), (1, "0.000001"), (0, "0"), (10_000_000, "10")],
)
def test_rendering_is_exact_and_plain(micros: int, text: str) -> None:
    assert str(from_micros(micros)) == text


@given(st.integers(min_value=0, max_value=10**15))
def test_micros_round_trip(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


@given(st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**6), places=6))
def test_parsed_usage_amount_converts_exactly(amount: Decimal) -> None:
    parsed = parse_amount(amount, **USAGE)
    assert from_micros(to_micros(parsed)) == parsed
