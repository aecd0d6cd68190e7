"""Request and response shapes of billing info."""

from __future__ import annotations

from typing import Annotated

import pycountry
from pydantic import AfterValidator, EmailStr, Field

from billfold.schemas import RequestModel, ResponseModel
from billfold.text import CleanText


def _country(value: str | None) -> str | None:
    if value is None:
        return None
    code = value.strip().upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code, such as US or DE")
    return code


Text = Annotated[CleanText, Field(min_length=1, max_length=200)]
Country = Annotated[str, AfterValidator(_country)]


class BillingInfoUpdate(RequestModel):
    """Every field is optional: fields left out keep their value; null clears one."""

    name: Text | None = None
    email: EmailStr | None = None
    tax_id: Annotated[CleanText, Field(min_length=1, max_length=64)] | None = None
    tax_id_type: Annotated[CleanText, Field(min_length=2, max_length=16)] | None = None
    address_line1: Text | None = None
    address_line2: Text | None = None
    address_city: Annotated[CleanText, Field(min_length=1, max_length=120)] | None = None
    address_state: Annotated[CleanText, Field(min_length=1, max_length=120)] | None = None
    address_postal_code: Annotated[CleanText, Field(min_length=1, max_length=32)] | None = None
    address_country: Country | None = None


class AddressOut(ResponseModel):
    line1: str | None
    line2: str | None
    city: str | None
    state: str | None
    postal_code: str | None
    country: str | None


class BillingInfoOut(ResponseModel):
    name: str | None
    email: str | None
    tax_id: str | None
    tax_id_type: str | None
    address_line1: str | None
    address_line2: str | None
    address_city: str | None
    address_state: str | None
    address_postal_code: str | None
    address_country: str | None
    address: AddressOut
