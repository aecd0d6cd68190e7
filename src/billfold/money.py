"""Money at the edges: decimals in the API, integer micros (millionths of a unit) inside.

The one home of Billfold's money units, limits and rounding: every amount minimum, every
conversion between micros, cents, percent and basis points, and the currency text a human
reads. Nothing here touches float: request bodies are parsed with `parse_float=Decimal`
(see `api/routing.py`), and responses render micros back to exact decimals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any

from babel.numbers import format_currency, get_currency_precision
from pydantic import WithJsonSchema
from pydantic_core import CoreSchema, core_schema

# Units.
MICROS_PER_UNIT = 1_000_000
MICROS_PER_CENT = 10_000  # card amounts are whole cents
BASIS_POINTS_PER_UNIT = 10_000  # 100% = 10,000 bp
BASIS_POINTS_PER_PERCENT = 100  # 12.5% = 1,250 bp
CARD_DECIMALS = 2  # what a card can charge: whole cents
USAGE_DECIMALS = 6  # what usage can cost: whole micros
PERCENT_DECIMALS = 2  # a percentage is whole basis points

# Limits on request amounts, in currency units.
MAX_AMOUNT = Decimal(1_000_000)  # any one amount
MIN_FUNDING = Decimal(10)  # a top-up, a payment link, a coupon purchase, pay-as-you-go
MIN_AUTO_CHARGE = Decimal(5)  # what auto-funding or a subscription's charge-amount charges
MAX_AUTO_CHARGE = Decimal(10_000)  # a subscription's charge-amount
MIN_CHARGE_THRESHOLD = Decimal(1)  # the balance under which auto-funding charges
ONE_CENT = Decimal("0.01")  # the least card amount (a withdrawal, a promotional credit)
ONE_MICRO = Decimal("0.000001")  # the least usage charge
MAX_PERCENT = Decimal(100)
# A string amount is plain ASCII decimal notation only: Decimal() would also take "1_0" (10),
# Arabic-Indic digits, surrounding spaces and exponents, none of which a client means.
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_AMOUNT_FORMAT = "must be a decimal number of currency units, such as 25 or 49.99"


def to_micros(amount: Decimal) -> int:
    micros = amount * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError("amount has more than 6 decimal places")
    return int(micros)


def from_micros(micros: int) -> Decimal:
    """An exact decimal with no trailing zeros: 25000000 → 25, 49990000 → 49.99."""
    value = Decimal(micros).scaleb(-6)
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def cents_to_micros(cents: int) -> int:
    return cents * MICROS_PER_CENT


def micros_to_cents(micros: int) -> int:
    if micros % MICROS_PER_CENT:
        raise ValueError("card amounts are whole cents")
    return micros // MICROS_PER_CENT


def floor_to_cent(micros: int) -> int:
    """Down to a whole cent (toward minus infinity): what is returned to a customer."""
    return micros - micros % MICROS_PER_CENT


def ceil_to_cent(micros: int) -> int:
    """Up to a whole cent: what a customer is charged or gives back."""
    return -floor_to_cent(-micros)


def round_to_cent(micros: int) -> int:
    """To the nearest whole cent, half away from zero (a prorated price, a tax share)."""
    sign = -1 if micros < 0 else 1
    return sign * ((abs(micros) + MICROS_PER_CENT // 2) // MICROS_PER_CENT * MICROS_PER_CENT)


def percent_to_basis_points(percent: Decimal) -> int:
    """12.5 → 1250; digits past a basis point are dropped (toward zero)."""
    return int(percent * BASIS_POINTS_PER_PERCENT)


def basis_points_to_percent(basis_points: int) -> Decimal:
    """1900 → 19, 1250 → 12.5: an exact decimal without trailing zeros."""
    return from_micros(basis_points * (MICROS_PER_UNIT // BASIS_POINTS_PER_PERCENT))


def share_of(micros: int, basis_points: int) -> int:
    """`basis_points` of `micros`, down to the micro (toward minus infinity)."""
    return micros * basis_points // BASIS_POINTS_PER_UNIT


def tax_inside(total_micros: int, basis_points: int) -> int:
    """The tax included in a tax-inclusive `total_micros` (not negative) at `basis_points`,
    rounded to the cent: the total less the net, the net rounded down to the micro."""
    if basis_points == 0:
        return 0
    net = total_micros * BASIS_POINTS_PER_UNIT // (BASIS_POINTS_PER_UNIT + basis_points)
    return round_to_cent(total_micros - net)


# Currency text for people (invoice PDFs, the hosted payment page) follows one locale.
LOCALE = "en_US"


def format_money(micros: int, currency: str) -> str:
    """`micros` of `currency` as a person reads it: -1234500000 USD → "-$1,234.50".

    Babel's CLDR data gives the symbol and the currency's decimals ($, €, £ and two for
    USD, EUR and GBP). The Decimal is rounded half to even to those decimals, never through
    float, and an amount that rounds to zero shows no sign (-0.004 USD → "$0.00").
    """
    places = Decimal(1).scaleb(-get_currency_precision(currency))
    amount = from_micros(micros).quantize(places, rounding=ROUND_HALF_EVEN)
    return format_currency(abs(amount) if amount == 0 else amount, currency, locale=LOCALE)


def parse_amount(value: Any, *, decimals: int, minimum: Decimal, maximum: Decimal) -> Decimal:
    """Validate a money amount from a request: a finite decimal in range with few decimals.

    JSON numbers arrive as int or Decimal (`parse_float=Decimal`), exponent forms included
    (`1e1` is a JSON number, exactly 10); strings must be plain ASCII decimals.
    """
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise ValueError(_AMOUNT_FORMAT)
    if isinstance(value, str) and _PLAIN_DECIMAL.fullmatch(value) is None:
        raise ValueError(_AMOUNT_FORMAT)
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    if amount < minimum:
        raise ValueError(f"must be at least {from_micros(to_micros(minimum))}")
    if amount > maximum:
        raise ValueError(f"must be at most {from_micros(to_micros(maximum))}")
    if amount != amount.quantize(Decimal(1).scaleb(-decimals)):
        raise ValueError(f"must have at most {decimals} decimal places")
    return amount


@dataclass(frozen=True)
class AmountRules:
    """Annotated metadata for a request amount: `Annotated[Decimal, AmountRules(...)]`."""

    decimals: int
    minimum: Decimal
    maximum: Decimal = MAX_AMOUNT
    nonzero: bool = False

    def parse(self, value: Any) -> Decimal:
        amount = parse_amount(
            value, decimals=self.decimals, minimum=self.minimum, maximum=self.maximum
        )
        if self.nonzero and amount == 0:
            raise ValueError("must not be zero")
        return amount

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.parse)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: Any) -> dict[str, Any]:
        return {
            "type": "number",
            "minimum": float(self.minimum),
            "maximum": float(self.maximum),
            "multipleOf": float(Decimal(1).scaleb(-self.decimals)),
            "description": f"Amount in currency units, at most {self.decimals} decimal places.",
        }


# A decimal amount in a response body: rendered as a JSON number (exact, via simplejson).
MoneyOut = Annotated[Decimal, WithJsonSchema({"type": "number"})]
