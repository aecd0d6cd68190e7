"""Card number checks and Stripe's test-card outcomes, as the sandbox processor uses them."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Decline:
    code: str  # Stripe's error code
    decline_code: str
    message: str
    on_attach: bool  # Stripe refuses to attach these cards to a customer at all
    off_session_only: bool = False  # declines only charges made without the cardholder


_GENERIC = "Your card was declined."

# SPEC §4: Stripe's test cards decide the outcome. Any other Luhn-valid number succeeds.
TEST_CARD_DECLINES: dict[str, Decline] = {
    "4000000000000002": Decline("card_declined", "generic_decline", _GENERIC, on_attach=True),
    "4000000000009995": Decline(
        "card_declined", "insufficient_funds", "Your card has insufficient funds.", on_attach=True
    ),
    "4000000000000069": Decline(
        "expired_card", "expired_card", "Your card has expired.", on_attach=True
    ),
    "4000000000000127": Decline(
        "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", on_attach=True
    ),
    "4000000000000119": Decline(
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
        on_attach=True,
    ),
    "4000000000000341": Decline("card_declined", "generic_decline", _GENERIC, on_attach=False),
    "4000002500003155": Decline(
        "authentication_required",
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
        on_attach=False,
        off_session_only=True,
    ),
}


class InvalidCard(ValueError):
    def __init__(self, code: str, param: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.message = message


def luhn_valid(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"34", "37"}:
        return "amex"
    if 51 <= int(number[:2]) <= 55 or 2221 <= int(number[:4]) <= 2720:
        return "mastercard"
    if number.startswith(("6011", "65")):
        return "discover"
    return "unknown"


@dataclass(frozen=True)
class CheckedCard:
    number: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


def check_card(
    number: str, exp_month: str, exp_year: str, cvc: str | None, *, today: date
) -> CheckedCard:
    """Validate raw card fields the way Stripe does, naming the offending parameter."""
    digits = number.replace(" ", "").replace("-", "")
    if not digits.isdigit() or not 12 <= len(digits) <= 19 or not luhn_valid(digits):
        raise InvalidCard("incorrect_number", "card[number]", "Your card number is incorrect.")
    try:
        month = int(exp_month)
    except ValueError:
        month = 0
    if not 1 <= month <= 12:
        raise InvalidCard(
            "invalid_expiry_month", "card[exp_month]", "Your card's expiration month is invalid."
        )
    try:
        year = int(exp_year)
    except ValueError:
        year = -1
    if 0 <= year < 100:
        year += 2000
    if not today.year <= year <= today.year + 50 or (year, month) < (today.year, today.month):
        raise InvalidCard(
            "invalid_expiry_year", "card[exp_year]", "Your card's expiration year is invalid."
        )
    if cvc is not None and (not cvc.isdigit() or len(cvc) not in (3, 4)):
        raise InvalidCard("invalid_cvc", "card[cvc]", "Your card's security code is invalid.")
    return CheckedCard(digits, brand_of(digits), digits[-4:], month, year)


def fingerprint(number: str, secret: str) -> str:
    """Same card, same fingerprint, without keeping the number."""
    return hmac.new(secret.encode(), number.encode(), hashlib.sha256).hexdigest()[:16]
