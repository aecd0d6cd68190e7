"""Money units, rounding and currency text (money.py), and tax ids checked with stdnum."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billfold import money
from billfold.billing import tax_ids
from billfold.money import (
    basis_points_to_percent,
    ceil_to_cent,
    floor_to_cent,
    format_money,
    from_micros,
    percent_to_basis_points,
    round_to_cent,
    share_of,
    tax_inside,
)
from tests.helpers import Api, assert_error

# --- currency text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "currency", "text"),
    [
        (18_000_000, "USD", "$18.00"),
        (-18_000_000, "USD", "-$18.00"),
        (59_500_000, "EUR", "€59.50"),
        (-12_000_000, "EUR", "-€12.00"),
        (9_500_000, "GBP", "£9.50"),
        (-9_500_000, "GBP", "-£9.50"),
        (1_234_567_890_000, "USD", "$1,234,567.89"),
        (-1_234_567_890_000, "GBP", "-£1,234,567.89"),
        (0, "USD", "$0.00"),
        # Sub-cent amounts (a usage unit price) round half to even, as Decimal.quantize did.
        (1, "USD", "$0.00"),
        (5_000, "USD", "$0.00"),
        (15_000, "EUR", "€0.02"),
        (25_000, "GBP", "£0.02"),
        (1_999_999, "USD", "$2.00"),
        (-5_001, "USD", "-$0.01"),
        (-4_999, "USD", "$0.00"),  # rounds to zero: no sign
    ],
)
def test_format_money_in_the_three_account_currencies(
    micros: int, currency: str, text: str
) -> None:
    assert format_money(micros, currency) == text


def test_format_money_never_goes_through_float() -> None:
    # 12,345,678,901,234,567.89 has more digits than a double holds.
    micros = 12_345_678_901_234_567_890_000
    assert format_money(micros, "USD") == "$12,345,678,901,234,567.89"
    assert format_money(-micros, "EUR") == "-€12,345,678,901,234,567.89"


_FORMER_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def _former_pdf_money(micros: int, currency: str) -> str:
    """invoices/pdf.py's formatter before Babel, kept here to prove nothing moved."""
    amount = from_micros(micros).quantize(Decimal("0.01"))
    sign = "-" if amount < 0 else ""
    return f"{sign}{_FORMER_SYMBOLS[currency]}{abs(amount):,.2f}"


def _former_page_money(micros: int, currency: str) -> str:
    """checkout/pages.py's formatter before Babel (its amounts are never negative)."""
    amount = from_micros(micros).quantize(Decimal("0.01"))
    return f"{_FORMER_SYMBOLS[currency]}{amount:,}"


@given(
    micros=st.integers(min_value=-(10**15), max_value=10**15),
    currency=st.sampled_from(["USD", "EUR", "GBP"]),
)
def test_format_money_renders_what_both_former_formatters_did(micros: int, currency: str) -> None:
    text = format_money(micros, currency)
    assert text == _former_pdf_money(micros, currency)
    if micros >= 0:
        assert text == _former_page_money(micros, currency)


# --- units, minimums and rounding --------------------------------------------------------


def test_minimums_are_the_documented_ones() -> None:
    limits = (
        money.MIN_FUNDING,
        money.MIN_AUTO_CHARGE,
        money.MAX_AUTO_CHARGE,
        money.MIN_CHARGE_THRESHOLD,
        money.MAX_AMOUNT,
    )
    assert limits == (Decimal(10), Decimal(5), Decimal(10_000), Decimal(1), Decimal(1_000_000))
    assert money.MICROS_PER_CENT * 100 == money.MICROS_PER_UNIT
    assert money.BASIS_POINTS_PER_PERCENT * 100 == money.BASIS_POINTS_PER_UNIT


@pytest.mark.parametrize(
    ("micros", "down", "up", "nearest"),
    [
        (0, 0, 0, 0),
        (10_000, 10_000, 10_000, 10_000),
        (14_999, 10_000, 20_000, 10_000),
        (15_000, 10_000, 20_000, 20_000),  # half away from zero
        (-15_000, -20_000, -10_000, -20_000),
        (-14_999, -20_000, -10_000, -10_000),
        (1, 0, 10_000, 0),
        (-1, -10_000, 0, 0),
    ],
)
def test_cent_rounding(micros: int, down: int, up: int, nearest: int) -> None:
    assert (floor_to_cent(micros), ceil_to_cent(micros), round_to_cent(micros)) == (
        down,
        up,
        nearest,
    )


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_round_to_cent_is_the_nearest_cent(micros: int) -> None:
    rounded = round_to_cent(micros)
    assert rounded % money.MICROS_PER_CENT == 0
    assert abs(rounded - micros) <= money.MICROS_PER_CENT // 2
    assert round_to_cent(-micros) == -rounded


@pytest.mark.parametrize(
    ("percent", "basis_points", "shown"),
    [
        (Decimal(19), 1900, "19"),
        (Decimal("12.5"), 1250, "12.5"),
        (Decimal("0.01"), 1, "0.01"),
        (Decimal(100), 10_000, "100"),
        (Decimal("7.25"), 725, "7.25"),
    ],
)
def test_percent_and_basis_points(percent: Decimal, basis_points: int, shown: str) -> None:
    assert percent_to_basis_points(percent) == basis_points
    assert str(basis_points_to_percent(basis_points)) == shown


def test_shares_in_basis_points() -> None:
    assert share_of(50_000_000, 1250) == 6_250_000  # 12.5% of 50
    assert share_of(1, 5000) == 0  # down to the micro: never more than stated
    # 59.50 including 19% tax holds 9.50 of tax; 100 at 20% holds 16.67 (to the cent).
    assert tax_inside(59_500_000, 1900) == 9_500_000
    assert tax_inside(100_000_000, 2000) == 16_670_000
    assert tax_inside(100_000_000, 0) == 0


# --- tax ids -----------------------------------------------------------------------------

VALID = [
    ("eu_vat", "DE136695976", "DE136695976"),
    ("eu_vat", "de 123 456 788", "DE123456788"),
    ("eu_vat", "FR11123456782", "FR11123456782"),
    ("eu_vat", "FRAC123456782", "FRAC123456782"),
    ("eu_vat", "ATU12345675", "ATU12345675"),
    ("eu_vat", "NL123456789B13", "NL123456789B13"),
    ("eu_vat", "EL123456783", "EL123456783"),
    ("eu_vat", "XI123456782", "XI123456782"),
    ("eu_vat", "EU372123456", "EU372123456"),
    ("eu_oss_vat", "EU 372 123 456", "EU372123456"),
    ("gb_vat", "GB 123 456 782", "GB123456782"),
    ("gb_vat", "gb980780684", "GB980780684"),
    ("us_ein", "12-3456789", "123456789"),
    ("ca_bn", "123456782", "123456782"),
    ("ca_gst_hst", "123456782 RT 0002", "123456782RT0002"),
    ("au_abn", "83 914 571 673", "83914571673"),
    ("in_gst", "27AAPFU0939F1ZV", "27AAPFU0939F1ZV"),
    ("ch_vat", "CHE-107.787.577 IVA", "CHE107787577IVA"),
    ("ch_uid", "CHE-100.155.212", "CHE100155212"),
    ("no_vat", "995 525 828 MVA", "995525828MVA"),
    ("br_cnpj", "16.727.230/0001-97", "16727230000197"),
    ("br_cpf", "390.533.447-05", "39053344705"),
    ("jp_cn", "5-8356-7825-6246", "5835678256246"),
    ("jp_trn", "T5835678256246", "T5835678256246"),
    ("mx_rfc", "VACE-460910-SX6", "VACE460910SX6"),
    ("mk_vat", "4030000375897", "MK4030000375897"),
    ("mk_vat", "MK4030000375897", "MK4030000375897"),
    ("es_cif", "B64717838", "B64717838"),
    ("nz_gst", "49-098-576", "49098576"),
    ("tr_tin", "4540536920", "4540536920"),
    ("tr_tin", "17291716060", "17291716060"),
    ("au_arn", "123456789123", "123456789123"),  # no stdnum module: format only
    ("za_vat", "4123456789", "4123456789"),
    ("sg_gst", "M12345678X", "M12345678X"),
    ("ae_trn", " 1234 5678 9012 345 ", "123456789012345"),  # not checked: kept as typed
]


@pytest.mark.parametrize(("tax_id_type", "value", "stored"), VALID)
def test_valid_tax_ids_are_stored_compact(tax_id_type: str, value: str, stored: str) -> None:
    assert tax_ids.check(tax_id_type, value) == stored


CHECK_DIGIT_WRONG = [
    ("eu_vat", "DE136695978"),
    ("eu_vat", "DE123456789"),
    ("eu_vat", "FRAB123456789"),
    ("eu_vat", "ATU12345678"),
    ("eu_vat", "NL123456789B12"),
    ("gb_vat", "GB123456789"),
    ("ca_bn", "123456789"),
    ("au_abn", "12 345 678 912"),
    ("in_gst", "27AAPFU0939F1ZW"),
    ("ch_vat", "CHE-107.787.578 IVA"),
    ("no_vat", "995525829MVA"),
    ("br_cnpj", "16.727.230/0001-98"),
    ("br_cpf", "390.533.447-06"),
    ("jp_trn", "T5835678256247"),
    ("mk_vat", "MK4030000375890"),
]


@pytest.mark.parametrize(("tax_id_type", "value"), CHECK_DIGIT_WRONG)
def test_a_wrong_check_digit_is_refused(tax_id_type: str, value: str) -> None:
    with pytest.raises(ValueError, match="check digit does not match") as refused:
        tax_ids.check(tax_id_type, value)
    assert str(refused.value).startswith(f"not a valid {tax_id_type} number")


@pytest.mark.parametrize(
    ("tax_id_type", "value"),
    [
        ("eu_vat", "DE123"),
        ("eu_vat", "GB123456782"),  # the United Kingdom left: gb_vat
        ("eu_vat", "IM3721234567"),  # an import-scheme number is not a VAT registration
        ("eu_vat", "EU123456789"),  # not a member state's code after EU
        ("eu_oss_vat", "DE136695976"),
        ("gb_vat", "123456782"),  # gb_vat keeps its GB prefix
        ("us_ein", "12-345678"),
        ("us_ein", "07-3456789"),  # no IRS campus issues prefix 07
        ("jp_trn", "5835678256246"),  # without its T
        ("au_arn", "12345678912"),
        ("za_vat", "5123456789"),
    ],
)
def test_a_malformed_tax_id_is_refused(tax_id_type: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^not a valid {tax_id_type} number"):
        tax_ids.check(tax_id_type, value)


def test_every_example_in_an_error_is_itself_valid() -> None:
    for tax_id_type, rule in tax_ids.RULES.items():
        assert tax_id_type in tax_ids.TAX_ID_TYPES
        tax_ids.check(tax_id_type, rule.example)


# --- through the API ---------------------------------------------------------------------


def test_api_refuses_a_wrong_check_digit_and_keeps_the_old_value(api: Api) -> None:
    agent = api.new_agent()
    kept = agent.put("/billing/info", {"tax_id": "de 136 695 976", "tax_id_type": "eu_vat"})
    assert kept.status_code == 200, kept.text
    assert kept.json()["data"]["tax_id"] == "DE136695976"
    response = agent.put("/billing/info", {"tax_id": "DE136695978", "tax_id_type": "eu_vat"})
    error = assert_error(response, 422, "invalid_request")
    assert error["details"]["field"] == "tax_id"
    assert "not a valid eu_vat number: the check digit does not match" in error["message"]
    assert agent.get("/billing/info").json()["data"]["tax_id"] == "DE136695976"


def test_api_stores_the_compact_form(api: Api) -> None:
    agent = api.new_agent()
    response = agent.put(
        "/billing/info", {"tax_id": "CHE-107.787.577 IVA", "tax_id_type": "ch_vat"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["tax_id"] == "CHE107787577IVA"
    unknown = agent.put("/billing/info", {"tax_id": "X", "tax_id_type": "zz_nope"})
    assert assert_error(unknown, 422, "invalid_request")["details"]["field"] == "tax_id_type"
    assert agent.get("/billing/info").json()["data"]["tax_id"] == "CHE107787577IVA"
