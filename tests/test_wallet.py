"""Funding, withdrawal, refunds, adjustments, spending order and the transaction ledger."""

from __future__ import annotations

from decimal import Decimal

from tests.helpers import Api, assert_error, decimal_json

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")


def test_fund_needs_a_card(api: Api) -> None:
    agent = api.new_agent()
    assert_error(agent.post("/wallet/fund", {"amount": 10}), 422, "payment_method_required")
    assert agent.transaction_count() == 0


def test_withdraw_refunds_newest_payments_first(api: Api) -> None:
    agent = api.new_agent()
    first = agent.fund(20).json()["data"]["payment_intent_id"]
    second = agent.fund(30).json()["data"]["payment_intent_id"]
    response = agent.post("/wallet/withdraw", {"amount": 40})
    assert response.status_code == 200, response.text
    data = decimal_json(response)["data"]
    assert data["balance"] == 10
    refunds = [(r["payment_intent_id"], r["amount"], r["status"]) for r in data["refunds"]]
    assert refunds == [(second, 30, "succeeded"), (first, 10, "succeeded")]
    assert agent.get(f"/payments/{second}/status").json()["data"]["amount_refunded"] == 30
    assert agent.get(f"/payments/{first}/status").json()["data"]["amount_refunded"] == 10
    debit = agent.get("/wallet/transactions", params={"type": "debit"}).json()["data"]["items"]
    assert [(t["usecase"], t["amount"], t["balance_after"]) for t in debit] == [
        ("withdrawal", 40, 10)
    ]
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_withdraw_more_than_purchased_changes_nothing(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(15)
    error = assert_error(agent.post("/wallet/withdraw", {"amount": "15.01"}), 402)
    assert error["code"] == "insufficient_funds"
    assert error["details"]["withdrawable"] == 15
    assert agent.balance() == 15
    assert agent.transaction_count() == 1


def test_promotional_credit_is_spent_first_and_never_withdrawn(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(20)
    credit = api.admin_post(
        "/adjustments", {"account_id": agent.account_id, "amount": 5, "reason": "goodwill"}
    )
    assert credit.status_code == 201, credit.text
    balance = decimal_json(agent.get("/wallet/balance"))["data"]
    assert balance["balance"] == 25
    assert balance["breakdown"] == {"subscription": 0, "promotional": 5, "purchased": 20}
    assert balance["withdrawable"] == 20

    assert_error(agent.post("/wallet/withdraw", {"amount": 21}), 402, "insufficient_funds")
    charged = api.charge_usage(agent.account_id, "7.5")
    assert charged.status_code == 201, charged.text
    breakdown = decimal_json(agent.get("/wallet/balance"))["data"]["breakdown"]
    assert breakdown == {"subscription": 0, "promotional": 0, "purchased": Decimal("17.5")}
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_operator_refund_and_debit_adjustment(api: Api) -> None:
    agent = api.new_agent()
    payment = agent.fund(50).json()["data"]["payment_intent_id"]
    refund = api.admin_post(
        "/refunds", {"payment_intent_id": payment, "amount": 20, "reason": "duplicate order"}
    )
    assert refund.status_code == 201, refund.text
    assert refund.json()["data"]["balance"] == 30
    # More than is left of the payment, and a payment that does not exist.
    too_much = api.admin_post(
        "/refunds", {"payment_intent_id": payment, "amount": 31, "reason": "x"}
    )
    assert_error(too_much, 409, "refund_exceeds_payment")
    assert_error(api.admin_post("/refunds", {"payment_intent_id": "pi_x", "reason": "x"}), 404)

    debit = api.admin_post(
        "/adjustments", {"account_id": agent.account_id, "amount": "-0.5", "reason": "fix"}
    )
    assert debit.status_code == 201, debit.text
    assert debit.json()["data"]["type"] == "debit"
    assert agent.balance() == Decimal("29.5")
    overdraw = api.admin_post(
        "/adjustments", {"account_id": agent.account_id, "amount": -30, "reason": "x"}
    )
    assert_error(overdraw, 402, "insufficient_funds")
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_transactions_paginate_newest_first(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(100)
    for index in range(1, 6):
        assert api.charge_usage(agent.account_id, f"0.00000{index}").status_code == 201
    page = agent.get("/wallet/transactions", params={"limit": 2, "offset": 1}).json()["data"]
    assert [t["amount"] for t in page["items"]] == [0.000004, 0.000003]
    assert (page["total"], page["limit"], page["offset"], page["has_more"]) == (6, 2, 1, True)
    debits = agent.get("/wallet/transactions", params={"type": "debit"}).json()["data"]
    assert [t["usecase"] for t in debits["items"]] == ["tokens"] * 5
    everything = decimal_json(agent.get("/wallet/transactions", params={"limit": 200}))["data"]
    assert everything["has_more"] is False
    assert everything["items"][0]["balance_after"] == everything["wallet"]["balance"]
    assert everything["wallet"]["balance"] == Decimal("99.999985")
    for params in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"type": "refund"}):
        assert_error(agent.get("/wallet/transactions", params=params), 422, "invalid_request")
