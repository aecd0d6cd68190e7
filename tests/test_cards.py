"""Card checks the sandbox makes at tokenization, as Stripe does."""

from __future__ import annotations

from datetime import date

import pytest

from billfold.processors.cards import InvalidCard, brand_of, check_card, luhn_valid

# Run on both processors (tests/conftest.py `pytest_generate_tests`). These tests call
# the card checks directly, with no live server, so there is nothing to parametrize: they
# run once. The same checks on stripe are localstripe's, through tokenization elsewhere.
PROCESSORS = ("sandbox", "stripe")

TODAY = date(2026, 11, 26)


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
    ],
)
def test_brands_and_luhn(number: str, brand: str) -> None:
    assert luhn_valid(number)
    assert brand_of(number) == brand


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        (("4242424242424241", "12", "2030", "123"), "incorrect_number"),
        (("4242", "12", "2030", "123"), "incorrect_number"),
        (("4242abcd42424242", "12", "2030", "123"), "incorrect_number"),
        (("4242424242424242", "13", "2030", "123"), "invalid_expiry_month"),
        (("4242424242424242", "x", "2030", "123"), "invalid_expiry_month"),
        (("4242424242424242", "10", "2026", "123"), "invalid_expiry_year"),  # expired last month
        (("4242424242424242", "12", "2099", "123"), "invalid_expiry_year"),
        (("4242424242424242", "12", "2030", "12"), "invalid_cvc"),
        (("4242424242424242", "12", "2030", "12a"), "invalid_cvc"),
    ],
)
def test_invalid_cards_name_the_problem(fields: tuple[str, str, str, str], code: str) -> None:
    with pytest.raises(InvalidCard) as caught:
        check_card(*fields, today=TODAY)
    assert caught.value.code == code


def test_valid_card_keeps_only_what_it_may() -> None:
    card = check_card("4242 4242 4242 4242", "11", "26", "123", today=TODAY)
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("visa", "4242", 11, 2026)
