"""The sandbox's Stripe-compatible tokenization endpoint and its test-card outcomes."""

from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import select

from billfold.processors.sandbox import SandboxObject
from billfold.services import Services
from tests.helpers import (
    CARD_ATTACH_THEN_FAIL,
    CARD_DECLINED,
    CARD_EXPIRED,
    CARD_INCORRECT_CVC,
    CARD_INSUFFICIENT_FUNDS,
    CARD_OK,
    CARD_PROCESSING_ERROR,
    CARD_REQUIRES_AUTH,
    Api,
    assert_error,
)


def _tokenize(api: Api, auth: tuple[str, str] | None, **fields: object) -> requests.Response:
    data = {
        "type": "card",
        "card[number]": CARD_OK,
        "card[exp_month]": 12,
        "card[exp_year]": 2030,
        "card[cvc]": "123",
        **fields,
    }
    return requests.post(f"{api.base_url}/sandbox/v1/payment_methods", auth=auth, data=data)


def test_tokenize_answers_like_stripe(api: Api) -> None:
    response = _tokenize(api, ("pk_test_billfold_sandbox", ""))
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("pm_")
    assert body["object"] == "payment_method"
    assert body["card"] == body["card"] | {"brand": "visa", "last4": "4242", "exp_month": 12}


@pytest.mark.parametrize("auth", [None, ("pk_wrong", ""), ("", "")])
def test_tokenize_requires_the_publishable_key(api: Api, auth: tuple[str, str] | None) -> None:
    response = _tokenize(api, auth)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_tokenize_rejects_bad_cards_with_stripe_codes(api: Api) -> None:
    auth = ("pk_test_billfold_sandbox", "")
    bad_number = _tokenize(api, auth, **{"card[number]": "4242424242424241"})
    assert bad_number.status_code == 402
    assert bad_number.json()["error"] == bad_number.json()["error"] | {
        "type": "card_error",
        "code": "incorrect_number",
        "param": "card[number]",
    }
    missing = _tokenize(api, auth, **{"card[number]": ""})
    assert missing.status_code == 400
    assert _tokenize(api, auth, type="sepa_debit").status_code == 400


def test_card_numbers_are_never_stored(api: Api, services: Services) -> None:
    api.tokenize("4000056655665556")
    with services.database.read() as session:
        stored = json.dumps([obj.data for obj in session.scalars(select(SandboxObject))])
    assert "4000056655665556" not in stored
    assert "5665556" not in stored


def test_a_card_needing_authentication_answers_a_payment_link(api: Api) -> None:
    """Off-session, 3-D Secure cannot be done: a distinct 402 whose details carry a payment
    link for the same amount, which the human pays on the payment page."""
    agent = api.new_agent()
    body = {"amount": 20, "payment_method_id": agent.card(CARD_REQUIRES_AUTH)}
    response = agent.post("/wallet/fund", body, key="needs-auth-1")
    error = assert_error(response, 402, "authentication_required")
    details = error["details"]
    assert details["decline_code"] == "authentication_required"
    assert details["payment_url"].endswith(f"/pay/{details['session_id']}")
    assert details["expires_at"]
    data = response.json()["data"]
    assert data["status"] == "requires_action"
    assert data["error"] == error
    assert agent.balance() == 0
    # The same request again answers the same link (the reply is replayed), nothing charged.
    again = agent.post("/wallet/fund", body, key="needs-auth-1")
    assert again.headers.get("Idempotency-Replayed") == "true"
    assert again.json()["error"]["details"]["session_id"] == details["session_id"]
    # The human pays the link: the wallet is credited once.
    link = {"payment_url": details["payment_url"], "session_id": details["session_id"]}
    paid = api.pay_link(link)
    assert paid.status_code in (200, 303), paid.text
    confirmed = agent.post("/wallet/confirm-checkout", {"session_id": details["session_id"]})
    assert confirmed.status_code == 200, confirmed.text
    assert agent.balance() == 20


@pytest.mark.parametrize(
    ("number", "decline_code"),
    [
        (CARD_DECLINED, "generic_decline"),
        (CARD_INSUFFICIENT_FUNDS, "insufficient_funds"),
        (CARD_EXPIRED, "expired_card"),
        (CARD_INCORRECT_CVC, "incorrect_cvc"),
        (CARD_PROCESSING_ERROR, "processing_error"),
        (CARD_ATTACH_THEN_FAIL, "generic_decline"),
    ],
)
def test_test_cards_decline_funding(api: Api, number: str, decline_code: str) -> None:
    agent = api.new_agent()
    response = agent.fund(20, number)
    error = assert_error(response, 402, "payment_declined")
    assert error["details"]["decline_code"] == decline_code
    data = response.json()["data"]
    assert data["error"] == error
    assert data["decline_code"] == decline_code
    assert data["status"] in {"failed", "requires_action"}
    assert agent.balance() == 0
    assert agent.get("/billing/payment-methods").json()["data"]["items"] == []


@pytest.mark.parametrize(
    ("number", "attaches"),
    [
        (CARD_OK, True),
        (CARD_ATTACH_THEN_FAIL, True),
        (CARD_REQUIRES_AUTH, True),
        (CARD_DECLINED, False),
        (CARD_INSUFFICIENT_FUNDS, False),
    ],
)
def test_attach_declines_as_stripe_does(api: Api, number: str, attaches: bool) -> None:
    agent = api.new_agent()
    response = agent.post("/billing/payment-methods", {"payment_method_id": agent.card(number)})
    if attaches:
        assert response.status_code == 201, response.text
    else:
        assert_error(response, 402, "card_declined")


def test_card_that_attaches_but_fails_every_charge(api: Api) -> None:
    agent = api.new_agent()
    pm = agent.card(CARD_ATTACH_THEN_FAIL)
    assert agent.post("/billing/payment-methods", {"payment_method_id": pm}).status_code == 201
    for _ in range(2):
        response = agent.post("/wallet/fund", {"amount": 10})
        assert_error(response, 402, "payment_declined")
    assert agent.balance() == 0
