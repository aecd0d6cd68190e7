"""The reference document's headless flow, its code copied as agents run it.

Only the base URLs differ: BASE points at this Billfold, and the tokenization call
goes to the `api_base` from /billing/stripe-config instead of api.stripe.com.
"""

from __future__ import annotations

import pytest
import requests

from tests import reference as ref
from tests.helpers import CARD_INSUFFICIENT_FUNDS, Agent, Api

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")


def configure_reference(api: Api) -> None:
    """The reference's base URLs for this server: on stripe cards are tokenized at the
    server's Stripe (the fake), as /billing/stripe-config says."""
    ref.configure(api.base_url)
    ref.STRIPE_API = api.tokenize_base


@pytest.fixture
def agent(api: Api) -> Agent:
    agent = api.new_agent()
    configure_reference(api)
    assert ref.get_stripe_config(agent.token)["api_base"] == ref.STRIPE_API
    return agent


def test_headless_flow(agent: Agent) -> None:
    token = agent.token
    config_resp = requests.get(f"{ref.BASE}/billing/stripe-config", headers=ref.headers(token))
    stripe_pk = config_resp.json()["publishable_key"]  # the snippet that reads it top-level
    assert stripe_pk == ref.get_stripe_config(token)["publishable_key"]

    pm_id = ref.create_payment_method("4242424242424242", 12, 2030, "123", stripe_pk)
    assert pm_id.startswith("pm_")
    result = ref.fund_wallet(token, 25, payment_method_id=pm_id, idempotency_key="fund-25-first")
    assert result["status"] == "succeeded"
    assert not result.get("error")

    balance = ref.get_wallet_balance(token)
    assert balance["balance"] == 25
    assert balance["currency"] == "USD"

    # A retry with the same key charges nothing more.
    again = ref.fund_wallet(token, 25, payment_method_id=pm_id, idempotency_key="fund-25-first")
    assert again["payment_intent_id"] == result["payment_intent_id"]
    assert ref.get_wallet_balance(token)["balance"] == 25

    txns = ref.get_wallet_transactions(token, type="credit", limit=20)
    assert [t["amount"] for t in txns["items"]] == [25]
    txn = txns["items"][0]
    assert txn["type"] == "credit"
    assert txn["usecase"] == "wallet_funding"
    assert txn["balance_after"] == 25
    assert txns["wallet"]["balance"] == 25
    assert ref.get_wallet_transactions(token, type="debit")["items"] == []

    status = ref.get_payment_status(token, result["payment_intent_id"])
    assert status["status"] == "succeeded"
    assert status["amount"] == 25

    # The card was saved as the default: funding without a card uses it.
    methods = ref.list_payment_methods(token)
    assert [m["id"] for m in methods["items"]] == [pm_id]
    assert methods["items"][0]["is_default"] is True
    assert methods["items"][0]["last4"] == "4242"
    ref.fund_wallet(token, 10.5)
    assert ref.get_wallet_balance(token)["balance"] == 35.5


def test_decline_reports_decline_code(agent: Agent) -> None:
    stripe_pk = ref.get_stripe_config(agent.token)["publishable_key"]
    pm_id = ref.create_payment_method(CARD_INSUFFICIENT_FUNDS, 12, 2030, "123", stripe_pk)
    result = ref.fund_wallet(agent.token, 50, payment_method_id=pm_id)
    # The reference's error check, as written.
    assert result.get("error")
    assert result["error"]["code"] == "payment_declined"
    assert result["error"]["details"]["decline_code"] == "insufficient_funds"
    assert result["status"] == "failed"
    assert ref.get_wallet_balance(agent.token)["balance"] == 0
    assert ref.get_payment_status(agent.token, result["payment_intent_id"])["status"] == "failed"
    assert ref.get_wallet_transactions(agent.token)["items"] == []


def test_saved_card_management(agent: Agent) -> None:
    stripe_pk = ref.get_stripe_config(agent.token)["publishable_key"]
    first = ref.create_payment_method("4242424242424242", 12, 2030, "123", stripe_pk)
    second = ref.create_payment_method("5555555555554444", 11, 2031, "123", stripe_pk)
    assert ref.add_payment_method(agent.token, first)["is_default"] is True
    added = ref.add_payment_method(agent.token, second, make_default=False)
    assert added["brand"] == "mastercard"
    assert added["is_default"] is False

    ref.set_default_payment_method(agent.token, second)
    methods = ref.list_payment_methods(agent.token)
    assert methods["default_payment_method_id"] == second
    assert sorted(m["is_default"] for m in methods["items"]) == [False, True]

    ref.remove_payment_method(agent.token, second)
    methods = ref.list_payment_methods(agent.token)
    assert [m["id"] for m in methods["items"]] == [first]
    assert methods["default_payment_method_id"] == first  # the remaining card took over

    ref.fund_wallet(agent.token, 40, payment_method_id=first)
    result = ref.withdraw(agent.token, 15)
    assert result["balance"] == 25
    assert [r["amount"] for r in result["refunds"]] == [15]
