"""The reference document's headless flow, its code copied as agents run it.

Only the base URLs differ: BASE points at this Billfold, and the tokenization call
goes to the `api_base` from /billing/stripe-config instead of api.stripe.com.
"""

from __future__ import annotations

import pytest
import requests

from tests.helpers import CARD_INSUFFICIENT_FUNDS, Agent, Api

BASE = ""
STRIPE_API = ""


def headers(token):
    return {"Authorization": f"Bearer {token}"}


# --- copied from the reference document -----------------------------------------------


def get_stripe_config(token):
    resp = requests.get(f"{BASE}/billing/stripe-config", headers=headers(token))
    return resp.json()["data"]


def create_payment_method(card_number, exp_month, exp_year, cvc, stripe_pk):
    resp = requests.post(
        f"{STRIPE_API}/v1/payment_methods",
        auth=(stripe_pk, ""),
        data={
            "type": "card",
            "card[number]": card_number,
            "card[exp_month]": exp_month,
            "card[exp_year]": exp_year,
            "card[cvc]": cvc,
        },
    )
    return resp.json()["id"]


def fund_wallet(token, amount, payment_method_id=None, idempotency_key=None):
    payload = {"amount": amount}
    if payment_method_id:
        payload["payment_method_id"] = payment_method_id
    h = headers(token)
    if idempotency_key:
        h["Idempotency-Key"] = idempotency_key
    resp = requests.post(f"{BASE}/wallet/fund", headers=h, json=payload)
    return resp.json()["data"]


def get_wallet_balance(token):
    resp = requests.get(f"{BASE}/wallet/balance", headers=headers(token))
    return resp.json()["data"]


def get_wallet_transactions(token, type=None, limit=50, offset=0):
    params = {"limit": limit, "offset": offset}
    if type:
        params["type"] = type
    resp = requests.get(f"{BASE}/wallet/transactions", headers=headers(token), params=params)
    return resp.json()["data"]


def get_payment_status(token, payment_intent_id):
    resp = requests.get(f"{BASE}/payments/{payment_intent_id}/status", headers=headers(token))
    return resp.json()["data"]


def list_payment_methods(token):
    resp = requests.get(f"{BASE}/billing/payment-methods", headers=headers(token))
    return resp.json()["data"]


def add_payment_method(token, payment_method_id, make_default=True):
    resp = requests.post(
        f"{BASE}/billing/payment-methods",
        headers=headers(token),
        json={"payment_method_id": payment_method_id, "make_default": make_default},
    )
    return resp.json()["data"]


def set_default_payment_method(token, payment_method_id):
    requests.put(
        f"{BASE}/billing/payment-methods/{payment_method_id}/default", headers=headers(token)
    )


def remove_payment_method(token, payment_method_id):
    requests.delete(f"{BASE}/billing/payment-methods/{payment_method_id}", headers=headers(token))


def withdraw(token, amount):
    resp = requests.post(f"{BASE}/wallet/withdraw", headers=headers(token), json={"amount": amount})
    return resp.json()["data"]


# --------------------------------------------------------------------------------------


@pytest.fixture
def agent(api: Api) -> Agent:
    agent = api.new_agent()
    global BASE, STRIPE_API
    BASE = f"{api.base_url}/api/agents/v1"
    STRIPE_API = get_stripe_config(agent.token)["api_base"]
    return agent


def test_headless_flow(agent: Agent) -> None:
    token = agent.token
    config_resp = requests.get(f"{BASE}/billing/stripe-config", headers=headers(token))
    stripe_pk = config_resp.json()["publishable_key"]  # the snippet that reads it top-level
    assert stripe_pk == get_stripe_config(token)["publishable_key"]

    pm_id = create_payment_method("4242424242424242", 12, 2030, "123", stripe_pk)
    assert pm_id.startswith("pm_")
    result = fund_wallet(token, 25, payment_method_id=pm_id, idempotency_key="fund-25-first")
    assert result["status"] == "succeeded"
    assert not result.get("error")

    balance = get_wallet_balance(token)
    assert balance["balance"] == 25
    assert balance["currency"] == "USD"

    # A retry with the same key charges nothing more.
    again = fund_wallet(token, 25, payment_method_id=pm_id, idempotency_key="fund-25-first")
    assert again["payment_intent_id"] == result["payment_intent_id"]
    assert get_wallet_balance(token)["balance"] == 25

    txns = get_wallet_transactions(token, type="credit", limit=20)
    assert [t["amount"] for t in txns["items"]] == [25]
    txn = txns["items"][0]
    assert txn["type"] == "credit"
    assert txn["usecase"] == "wallet_funding"
    assert txn["balance_after"] == 25
    assert txns["wallet"]["balance"] == 25
    assert get_wallet_transactions(token, type="debit")["items"] == []

    status = get_payment_status(token, result["payment_intent_id"])
    assert status["status"] == "succeeded"
    assert status["amount"] == 25

    # The card was saved as the default: funding without a card uses it.
    methods = list_payment_methods(token)
    assert [m["id"] for m in methods["items"]] == [pm_id]
    assert methods["items"][0]["is_default"] is True
    assert methods["items"][0]["last4"] == "4242"
    fund_wallet(token, 10.5)
    assert get_wallet_balance(token)["balance"] == 35.5


def test_decline_reports_decline_code(agent: Agent) -> None:
    stripe_pk = get_stripe_config(agent.token)["publishable_key"]
    pm_id = create_payment_method(CARD_INSUFFICIENT_FUNDS, 12, 2030, "123", stripe_pk)
    result = fund_wallet(agent.token, 50, payment_method_id=pm_id)
    # The reference's error check, as written.
    assert result.get("error")
    assert result["error"]["code"] == "payment_declined"
    assert result["error"]["details"]["decline_code"] == "insufficient_funds"
    assert result["status"] == "failed"
    assert get_wallet_balance(agent.token)["balance"] == 0
    assert get_payment_status(agent.token, result["payment_intent_id"])["status"] == "failed"
    assert get_wallet_transactions(agent.token)["items"] == []


def test_saved_card_management(agent: Agent) -> None:
    stripe_pk = get_stripe_config(agent.token)["publishable_key"]
    first = create_payment_method("4242424242424242", 12, 2030, "123", stripe_pk)
    second = create_payment_method("5555555555554444", 11, 2031, "123", stripe_pk)
    assert add_payment_method(agent.token, first)["is_default"] is True
    added = add_payment_method(agent.token, second, make_default=False)
    assert added["brand"] == "mastercard"
    assert added["is_default"] is False

    set_default_payment_method(agent.token, second)
    methods = list_payment_methods(agent.token)
    assert methods["default_payment_method_id"] == second
    assert sorted(m["is_default"] for m in methods["items"]) == [False, True]

    remove_payment_method(agent.token, second)
    methods = list_payment_methods(agent.token)
    assert [m["id"] for m in methods["items"]] == [first]
    assert methods["default_payment_method_id"] == first  # the remaining card took over

    fund_wallet(agent.token, 40, payment_method_id=first)
    result = withdraw(agent.token, 15)
    assert result["balance"] == 25
    assert [r["amount"] for r in result["refunds"]] == [15]
