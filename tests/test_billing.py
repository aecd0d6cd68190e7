"""Billing info and the billing overview, as the reference's snippets use them."""

from __future__ import annotations

import pytest
import requests

from tests import reference as ref
from tests.helpers import Api, assert_error


@pytest.fixture(autouse=True)
def _base(api: Api) -> None:
    ref.configure(api.base_url)


def test_billing_info_round_trip_and_partial_update(api: Api) -> None:
    agent = api.new_agent()
    empty = ref.get_billing_info(agent.token)
    assert empty["name"] is None
    assert empty["address"]["country"] is None
    ref.update_billing_info(
        agent.token,
        name="Acme Corp",
        email="billing@acme.com",
        tax_id="EU372123456",
        tax_id_type="eu_vat",
        address_line1="123 AI Street",
        address_city="San Francisco",
        address_state="CA",
        address_postal_code="94105",
        address_country="US",
    )
    info = ref.get_billing_info(agent.token)
    assert (info["name"], info["tax_id"], info["address_country"]) == (
        "Acme Corp",
        "EU372123456",
        "US",
    )
    assert info["address"]["city"] == "San Francisco"
    # A partial update keeps the other fields; null clears one.
    ref.update_billing_info(agent.token, name="Zoë Ødegård", address_line2="Suite 5")
    ref.update_billing_info(agent.token, address_state=None)
    info = ref.get_billing_info(agent.token)
    assert (info["name"], info["address_line2"], info["email"]) == (
        "Zoë Ødegård",
        "Suite 5",
        "billing@acme.com",
    )
    assert info["address_state"] is None
    ref.update_billing_info(agent.token, tax_id="de 123 456 788", tax_id_type="eu_vat")
    assert ref.get_billing_info(agent.token)["tax_id"] == "DE123456788"  # normalized


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address_country": "USA"}, "address_country"),
        ({"address_country": "XX"}, "address_country"),
        ({"email": "not-an-email"}, "email"),
        ({"tax_id": "DE123"}, "tax_id_type"),
        ({"tax_id": "DE123", "tax_id_type": "eu_vat"}, "tax_id"),
        ({"tax_id": "123456789", "tax_id_type": "gb_vat"}, "tax_id"),
        ({"tax_id": "12-345678", "tax_id_type": "us_ein"}, "tax_id"),
        ({"tax_id": "1234", "tax_id_type": "au_abn"}, "tax_id"),
        ({"tax_id": "X", "tax_id_type": "zz_nope"}, "tax_id_type"),
        ({"name": ""}, "name"),
        ({"nickname": "x"}, "nickname"),
    ],
)
def test_billing_info_refuses_bad_fields(api: Api, body: dict, field: str) -> None:
    agent = api.new_agent()
    ref.update_billing_info(agent.token, name="Kept")
    response = requests.put(f"{ref.BASE}/billing/info", headers=ref.headers(agent.token), json=body)
    error = assert_error(response, 422, "invalid_request")
    assert error["details"]["field"] == field
    assert ref.get_billing_info(agent.token)["name"] == "Kept"
    assert ref.get_billing_info(agent.token)["tax_id"] is None


@pytest.mark.parametrize(
    ("tax_id_type", "tax_id"),
    [
        ("gb_vat", "GB123456782"),
        ("us_ein", "12-3456789"),
        ("au_abn", "12 345 678 012"),
        ("ca_bn", "123456782"),
        ("in_gst", "12ABCPE3456F1ZA"),
        ("eu_vat", "FRAC123456782"),
        ("jp_trn", "T1234567891236"),
    ],
)
def test_common_tax_ids_accepted(api: Api, tax_id_type: str, tax_id: str) -> None:
    agent = api.new_agent()
    data = ref.update_billing_info(agent.token, tax_id=tax_id, tax_id_type=tax_id_type)
    assert data["tax_id_type"] == tax_id_type


def test_overview_and_the_reference_top_up_helper(api: Api) -> None:
    agent = api.new_agent()
    overview = ref.get_billing_overview(agent.token)
    assert overview["wallet_balance"] == 0
    assert overview["active_subscriptions"] == []
    assert overview["default_payment_method"] is None
    agent.fund(10)
    api.charge_usage(agent.account_id, 3)
    ref.ensure_account_funded(
        agent.token, min_balance=10, top_up_amount=25
    )  # uses the default card
    overview = ref.get_billing_overview(agent.token)
    assert overview["wallet_balance"] == 32
    assert overview["default_payment_method"]["last4"] == "4242"
    assert [c["amount"] for c in overview["recent_charges"]] == [25, 10]
    assert overview["recent_transactions"][0]["amount"] == 25
    assert overview["auto_funding"]["enabled"] is False
    ref.ensure_account_funded(agent.token, min_balance=10, top_up_amount=25)  # enough: no charge
    assert len(ref.get_billing_overview(agent.token)["recent_charges"]) == 2
