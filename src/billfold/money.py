"""Money at the edges: decimals in the API, integer micros (millionths of a unit) inside.

Nothing here touches float: request bodies are parsed with `parse_float=Decimal`
(see `api/routing.py`), and responses render micros back to exact decimals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import WithJsonSchema
from pydantic_core import CoreSchema, core_schema

MICROS_PER_UNIT = 1_000_000
MAX_AMOUNT = Decimal(1_000_000)
CARD_DECIMALS = 2
USAGE_DECIMALS = 6
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


MICROS_PER_CENT = 10_000


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
