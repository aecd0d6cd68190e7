"""A process that dies between the processor's charge and recording it loses no money."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from billfold.application.jobs import Worker
from billfold.checkout import service as checkout
from billfold.clock import now
from billfold.coupons import service as coupons
from billfold.jobs.models import Job
from billfold.payments import attempts
from billfold.payments.models import Payment
from billfold.processors.sandbox import SandboxObject
from billfold.services import Services
from billfold.wallet import funding as wallet_funding
from tests.helpers import Api, age_open_attempts, bonus_coupon

AFTER_RECOVERY_DELAY = attempts.STALE_AFTER + timedelta(seconds=5)


class ProcessDied(Exception):
    pass


class DyingProcessor:
    """The real sandbox processor, but the process 'dies' around the charge call."""

    def __init__(self, inner: Any, *, charge_reaches_processor: bool) -> None:
        self.inner = inner
        self.charge_reaches_processor = charge_reaches_processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def charge(self, **kwargs: Any) -> Any:
        if self.charge_reaches_processor:
            self.inner.charge(**kwargs)
        raise ProcessDied


def _after_recovery_delay(services: Services, account_id: str) -> None:
    """What the worker does once the recovery delay has passed (the account's attempts
    aged by it, their janitor jobs due)."""
    age_open_attempts(services, account_id, AFTER_RECOVERY_DELAY)
    Worker(services).drain(at=now() + AFTER_RECOVERY_DELAY)


def _payments(services: Services, account_id: str) -> list[Payment]:
    with services.database.read() as session:
        return list(session.scalars(select(Payment).where(Payment.account_id == account_id)))


def _recovery_jobs(services: Services, account_id: str) -> list[Job]:
    with services.database.read() as session:
        return list(
            session.scalars(
                select(Job).where(Job.account_id == account_id, Job.kind == attempts.JANITOR_JOB)
            )
        )


def test_charge_made_before_the_crash_is_recorded_once(api: Api, services: Services) -> None:
    agent = api.new_agent()
    pm = agent.card()
    dying = DyingProcessor(services.processor, charge_reaches_processor=True)
    with pytest.raises(ProcessDied):
        wallet_funding.fund_wallet(
            services.database,
            dying,
            account_id=agent.account_id,
            amount_micros=40_000_000,
            payment_method_id=pm,
            idempotency_key="crash-1",
        )
    assert agent.balance() == 0  # the card was charged, nothing recorded yet
    Worker(services).drain()
    assert agent.balance() == 0  # the recovery waits, in case the request is still running
    _after_recovery_delay(services, agent.account_id)
    assert agent.balance() == 40
    [payment] = _payments(services, agent.account_id)
    assert (payment.status, payment.amount_micros) == ("succeeded", 40_000_000)
    methods = agent.get("/billing/payment-methods").json()["data"]["items"]
    assert [m["id"] for m in methods] == [pm]  # the card was saved as the request would have
    txn = agent.get("/wallet/transactions").json()["data"]["items"][0]
    assert txn["metadata"] == {"recovered": True}
    # The client retrying with its key after the crash gets the same charge, not a second.
    retry = agent.post("/wallet/fund", {"amount": 40, "payment_method_id": pm}, key="crash-1")
    assert retry.status_code == 200, retry.text
    assert retry.json()["data"]["payment_intent_id"] == payment.id
    assert agent.balance() == 40
    with services.database.read() as session:
        intents = session.scalar(
            select(func.count())
            .select_from(SandboxObject)
            .where(SandboxObject.idempotency_key == f"fund:{agent.account_id}:crash-1")
        )
    assert intents == 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_charge_that_never_reached_the_processor_is_not_made(api: Api, services: Services) -> None:
    agent = api.new_agent()
    dying = DyingProcessor(services.processor, charge_reaches_processor=False)
    with pytest.raises(ProcessDied):
        wallet_funding.fund_wallet(
            services.database,
            dying,
            account_id=agent.account_id,
            amount_micros=40_000_000,
            payment_method_id=agent.card(),
            idempotency_key=None,
        )
    _after_recovery_delay(services, agent.account_id)
    assert agent.balance() == 0
    assert _payments(services, agent.account_id) == []
    # The janitor's first look (nothing found yet) and its check at STALE_AFTER (never
    # charged: settled failed), each done once.
    jobs = _recovery_jobs(services, agent.account_id)
    assert sorted((job.payload.get("found_only", False), job.status) for job in jobs) == [
        (False, "succeeded"),
        (True, "succeeded"),
    ]


def test_a_recorded_charge_cancels_its_recovery(api: Api, services: Services) -> None:
    agent = api.new_agent()
    assert agent.fund(25).status_code == 200
    jobs = _recovery_jobs(services, agent.account_id)
    assert len(jobs) == 2  # the first look and the check at STALE_AFTER
    for job in jobs:
        assert job.status == "succeeded"
        assert job.attempts == 0  # never ran
    _after_recovery_delay(services, agent.account_id)
    assert agent.balance() == 25


def test_payment_link_paid_before_the_crash_completes_later(api: Api, services: Services) -> None:
    agent = api.new_agent()
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 30}).json()["data"]
    dying = DyingProcessor(services.processor, charge_reaches_processor=True)
    with pytest.raises(ProcessDied):
        checkout.pay_with_card(
            services.database,
            dying,
            session_id=link["session_id"],
            number="4242424242424242",
            exp_month="12",
            exp_year="2034",
            cvc="123",
        )
    body = {"session_id": link["session_id"]}
    pending = agent.post("/wallet/confirm-checkout", body)
    assert pending.status_code == 409
    _after_recovery_delay(services, agent.account_id)
    confirmed = agent.post("/wallet/confirm-checkout", body)
    assert confirmed.status_code == 200, confirmed.text
    assert (confirmed.json()["data"]["status"], confirmed.json()["data"]["balance"]) == (
        "complete",
        30,
    )
    page = requests.get(link["payment_url"])
    assert link["session_id"] in page.text  # the human sees it paid
    assert agent.balance() == 30


@pytest.mark.parametrize("charged", [True, False])
def test_interrupted_coupon_purchase_is_finished_or_given_back(
    api: Api, services: Services, charged: bool
) -> None:
    code = bonus_coupon(api, max_redemptions=1)
    agent = api.new_agent()
    dying = DyingProcessor(services.processor, charge_reaches_processor=charged)
    with pytest.raises(ProcessDied):
        coupons.redeem(
            services.database,
            dying,
            account_id=agent.account_id,
            code=code,
            purchase_micros=20_000_000,
            payment_method_id=agent.card(),
            idempotency_key=None,
        )
    # Until the recovery job has looked, the reservation holds the last redemption.
    info = agent.get("/wallet/coupons/validate", params={"coupon_code": code}).json()["data"]
    assert info["error"]["code"] == "coupon_already_redeemed"
    other = api.new_agent()
    info = other.get("/wallet/coupons/validate", params={"coupon_code": code}).json()["data"]
    assert info["error"]["code"] == "coupon_exhausted"
    _after_recovery_delay(services, agent.account_id)
    if charged:
        balance = agent.get("/wallet/balance").json()["data"]
        assert (balance["balance"], balance["breakdown"]["promotional"]) == (25, 5)
        info = agent.get("/wallet/coupons/validate", params={"coupon_code": code}).json()["data"]
        assert info["error"]["code"] == "coupon_already_redeemed"
    else:
        assert agent.balance() == 0
        info = agent.get(
            "/wallet/coupons/validate", params={"coupon_code": code, "purchase_amount": 20}
        ).json()["data"]
        assert info["valid"] is True  # given back: redeemable again
