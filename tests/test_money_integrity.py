"""Issue 9's money rules, exactly: unused time on reset and cancel, currency mismatches,
coupon bonuses taken back with their purchase (also when the processor refuses)."""

from __future__ import annotations

import uuid
from decimal import Decimal as D
from typing import Any

from billfold.processors.base import Processor, RefundResult
from billfold.services import Services
from billfold.wallet import refunds as wallet_refunds
from tests.helpers import Agent, Api, assert_error, decimal_json
from tests.subscription_helpers import (
    create_plan,
    invoices_of,
    ledger_of,
    payments_of,
    subscribe,
    subscriber,
)

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")


def _balance(agent: Agent) -> dict[str, Any]:
    data: dict[str, Any] = decimal_json(agent.get("/wallet/balance"))["data"]
    return data


def _coupon(api: Api, **fields: object) -> str:
    code = f"M{uuid.uuid4().hex[:10].upper()}"
    response = api.admin_post("/coupons", {"code": code, **fields})
    assert response.status_code == 201, response.text
    return code


def _bonus_purchase(api: Api, agent: Agent, *, purchase: int, **coupon: object) -> str:
    """Redeem a new bonus coupon on a card purchase of `purchase`; its payment id."""
    code = _coupon(api, min_purchase=purchase, **coupon)
    redeemed = agent.post(
        "/wallet/coupons/redeem",
        {"coupon_code": code, "purchase_amount": purchase, "payment_method_id": agent.card()},
    )
    assert redeemed.status_code == 200, redeemed.text
    payment: str = redeemed.json()["data"]["payment_intent_id"]
    return payment


def test_reset_cycle_loops_cannot_mint_credits(api: Api, services: Services) -> None:
    """The issue's loop: spend the included credits, reset, spend, reset … Each reset
    costs what its new credits are worth, so spent credits never exceed what was paid."""
    plan = create_plan(api, price=20, included_credits=15)
    agent, pm = subscriber(api)
    sub = subscribe(agent, plan["id"], pm)
    for _ in range(3):
        assert api.charge_usage(agent.account_id, 15).status_code == 201
        reset = agent.post(f"/subscriptions/{sub['id']}/reset-cycle")
        assert reset.status_code == 200, reset.text
    assert api.charge_usage(agent.account_id, 15).status_code == 201
    invoiced = sum(i.total for i in invoices_of(services, agent.account_id))
    assert invoiced >= D(60)  # 60 of credits spent, at least 60 paid
    last = invoices_of(services, agent.account_id)[-1]
    assert last.billing_reason == "subscription_reset"
    unused, ahead, period = last.lines
    # Seconds after the last reset, nearly the whole period was unused (worth ~20), but
    # its 15 credits had all been spent ahead of time: only ~5 of it is returned.
    assert (unused.kind, ahead.kind, period.kind) == ("proration", "proration", "subscription")
    assert ahead.description == "Included credits already used beyond the elapsed time"
    assert D("19.98") <= -unused.amount <= D(20)
    assert ahead.amount == D(15)
    assert period.amount == D(20)
    assert last.total == period.amount + unused.amount + ahead.amount
    assert sum(p.amount_micros for p in payments_of(services, agent.account_id)) == sum(
        int(i.total * 1_000_000) for i in invoices_of(services, agent.account_id)
    )
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_reset_with_credits_left_keeps_the_unused_time(api: Api, services: Services) -> None:
    plan = create_plan(api, price=20, included_credits=15)
    agent, pm = subscriber(api)
    sub = subscribe(agent, plan["id"], pm)
    reset = agent.post(f"/subscriptions/{sub['id']}/reset-cycle")
    assert reset.status_code == 200, reset.text
    last = invoices_of(services, agent.account_id)[-1]
    unused, period = last.lines  # no credits spent: no deduction line
    assert D("19.99") <= -unused.amount <= D(20)
    assert last.total == period.amount + unused.amount


def test_cancel_now_returns_only_unconsumed_value(api: Api, services: Services) -> None:
    plan = create_plan(api, price=20, included_credits=15)
    agent, pm = subscriber(api)
    sub = subscribe(agent, plan["id"], pm)
    assert api.charge_usage(agent.account_id, 15).status_code == 201
    canceled = agent.post(f"/subscriptions/{sub['id']}/cancel", {"at_period_end": False})
    assert canceled.status_code == 200, canceled.text
    [(_, postings)] = [
        t for t in ledger_of(services, agent.account_id) if t[0] == "subscription_unused_time"
    ]
    returned = postings["wallet:promotional"]
    # Price 20, credits 15 all spent seconds in: what is left is worth 20 - 15 = 5.
    assert D("4.98") <= returned <= D(5)
    balance = _balance(agent)
    assert balance["breakdown"]["promotional"] == returned
    assert balance["withdrawable"] == 0
    assert_error(agent.post("/wallet/withdraw", {"amount": 1}), 402, "insufficient_funds")
    items = decimal_json(agent.get("/billing/invoices"))["data"]["items"]
    [note] = [i for i in items if i["object"] == "credit_note"]
    assert note["total"] == -returned
    detail = decimal_json(agent.get(f"/billing/invoices/{note['id']}"))["data"]
    unused, ahead = detail["lines"]
    assert "Unused time" in unused["description"]
    assert ahead["description"] == "Included credits already used beyond the elapsed time"
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_cancel_now_returns_the_unused_time_less_credits_used(api: Api, services: Services) -> None:
    plan = create_plan(api, price=20, included_credits=15)
    agent, pm = subscriber(api)
    sub = subscribe(agent, plan["id"], pm)
    assert api.charge_usage(agent.account_id, 1).status_code == 201
    canceled = agent.post(f"/subscriptions/{sub['id']}/cancel", {"at_period_end": False})
    assert canceled.status_code == 200, canceled.text
    returned = _balance(agent)["breakdown"]["promotional"]
    # Seconds in, the 1 spent was all ahead of the elapsed share: ~20 - 1 comes back.
    assert D("18.98") <= returned <= D(19)
    assert _balance(agent)["breakdown"]["subscription"] == 0  # the credits ended


def test_currency_mismatch_is_refused_and_changes_nothing(api: Api, services: Services) -> None:
    email = f"eur-{uuid.uuid4().hex[:10]}@example.com"
    created = api.admin_post(
        "/accounts", {"email": email, "password": "correct horse battery staple", "currency": "EUR"}
    )
    assert created.status_code == 201, created.text
    login = api.session.post(
        api.agent_url("/auth/login"),
        json={"email": email, "password": "correct horse battery staple", "expires_in": "never"},
    )
    agent = Agent(
        api, created.json()["data"]["id"], email, "x", login.json()["data"]["access_token"]
    )
    pm = agent.card()
    usd = create_plan(api, price=9)
    error = assert_error(
        agent.post("/subscriptions", {"plan_id": usd["id"], "payment_method_id": pm}),
        422,
        "currency_mismatch",
    )
    assert error["details"]["plan_currency"] == "USD"
    assert_error(agent.post("/subscriptions", {"plan_id": usd["id"]}), 422, "currency_mismatch")
    assert_error(
        agent.post("/billing/payment-link", {"purpose": "subscribe", "plan_id": usd["id"]}),
        422,
        "currency_mismatch",
    )
    assert payments_of(services, agent.account_id) == []
    assert decimal_json(agent.get("/subscriptions"))["data"]["items"] == []

    eur = create_plan(api, price=9, currency="EUR")
    started = subscribe(agent, eur["id"], pm)
    changed = agent.put(f"/subscriptions/{started['id']}", {"new_plan_id": usd["id"]})
    assert_error(changed, 422, "currency_mismatch")

    code = _coupon(api, kind="credit", amount=5, currency="USD")
    info = decimal_json(agent.get("/wallet/coupons/validate", params={"coupon_code": code}))
    assert (info["data"]["valid"], info["data"]["error"]["code"]) == (False, "currency_mismatch")
    assert_error(
        agent.post("/wallet/coupons/redeem", {"coupon_code": code}), 422, "currency_mismatch"
    )
    assert _balance(agent)["breakdown"]["promotional"] == 0


def test_operator_refund_of_a_coupon_purchase_takes_the_bonus_back(api: Api) -> None:
    agent = api.new_agent()
    payment = _bonus_purchase(api, agent, kind="bonus_percent", percent=50, purchase=20)
    assert _balance(agent)["breakdown"] == {"subscription": 0, "promotional": 10, "purchased": 20}
    assert _balance(agent)["withdrawable"] == 20
    refund = api.admin_post(
        "/refunds", {"payment_intent_id": payment, "amount": 5, "reason": "partial"}
    )
    assert refund.status_code == 201, refund.text
    # Any refund of the purchase takes the whole bonus back: it was given for the purchase.
    assert _balance(agent)["breakdown"] == {"subscription": 0, "promotional": 0, "purchased": 15}
    assert _balance(agent)["withdrawable"] == 15
    # Taken back once: the rest of the purchase refunds without touching other credit.
    assert (
        api.admin_post(
            "/adjustments", {"account_id": agent.account_id, "amount": 3, "reason": "goodwill"}
        ).status_code
        == 201
    )
    withdrawn = agent.post("/wallet/withdraw", {"amount": 15})
    assert withdrawn.status_code == 200, withdrawn.text
    assert _balance(agent)["breakdown"] == {"subscription": 0, "promotional": 3, "purchased": 0}
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_spent_bonus_makes_that_much_of_the_purchase_non_withdrawable(api: Api) -> None:
    """The issue's case: +$10 bonus on a $20 purchase; spent, then withdraw."""
    agent = api.new_agent()
    _bonus_purchase(api, agent, kind="bonus_percent", percent=50, purchase=20)
    assert api.charge_usage(agent.account_id, 4).status_code == 201  # from the bonus
    # Withdrawing takes the $10 bonus back: the 6 left from promotional credit, the 4
    # spent from purchased credit, so 16 of the 20 can go back to the card.
    assert _balance(agent)["withdrawable"] == 16
    assert_error(agent.post("/wallet/withdraw", {"amount": "16.01"}), 402, "insufficient_funds")
    withdrawn = agent.post("/wallet/withdraw", {"amount": 16})
    assert withdrawn.status_code == 200, withdrawn.text
    assert _balance(agent)["breakdown"] == {"subscription": 0, "promotional": 0, "purchased": 0}
    assert api.ledger_check(agent.account_id)["consistent"] is True


class RefusingRefunds:
    """The server's processor (sandbox or stripe), except that it refuses every refund."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str
    ) -> RefundResult:
        return RefundResult(refund_id=f"re_refused_{idempotency_key}", status="failed")


def test_refused_refund_gives_the_bonus_back(api: Api, services: Services) -> None:
    agent = api.new_agent()
    _bonus_purchase(api, agent, kind="bonus_fixed", amount=7, purchase=10)
    assert api.charge_usage(agent.account_id, 5).status_code == 201  # 5 of the 7 bonus
    before = _balance(agent)["breakdown"]
    assert before == {"subscription": 0, "promotional": 2, "purchased": 10}
    refusing = RefusingRefunds(services.processor)
    batch = wallet_refunds.withdraw(
        services.database,
        refusing,  # type: ignore[arg-type]  # a Processor by delegation
        account_id=agent.account_id,
        amount_micros=5_000_000,
    )
    assert [r.status for r in batch.refunds] == ["failed"]
    assert _balance(agent)["breakdown"] == before
    assert _balance(agent)["withdrawable"] == 5  # 10 less the 5 of bonus spent
    assert api.ledger_check(agent.account_id)["consistent"] is True
