"""The payment-attempt machine: every purpose's charge is recorded once, whatever breaks.

For each purpose: a processor that charges and then times out (the attempt is
`unknown`), a process that dies after the charge and before recording it (`pending`),
two janitors racing over one interrupted charge, and a charge that never reached the
processor (failed, nothing credited, what was reserved given back). The processor is
the real sandbox, wrapped to fail at the chosen moment; the databases are real.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from billfold.application.jobs import Worker, handlers
from billfold.checkout import service as checkout
from billfold.clock import now
from billfold.coupons import service as coupons
from billfold.jobs.models import Job
from billfold.jobs.service import ClaimedJob, enqueue
from billfold.payments import attempts, janitor
from billfold.payments.models import (
    AttemptPurpose,
    AttemptState,
    FailureReason,
    Payment,
    PaymentAttempt,
)
from billfold.payments.service import ensure_customer
from billfold.processors.sandbox import SandboxObject, SandboxProcessor
from billfold.services import Services
from billfold.subscriptions import engine
from billfold.subscriptions import start as subscriptions
from billfold.subscriptions.attempts import SETTLE_JOB
from billfold.subscriptions.plans import SELF_SERVE_KINDS, subscribable_plan
from billfold.subscriptions.states import BillingReason
from billfold.wallet import funding as wallet_funding
from billfold.wallet.auto_funding import JOB_KIND as TOP_UP_JOB
from billfold.wallet.auto_funding import run_top_up
from tests.helpers import CARD_OK, Agent, Api, age_open_attempts, bonus_coupon, decimal_json
from tests.subscription_helpers import create_plan, payments_of, status, subscriber

AFTER_STALE = attempts.STALE_AFTER + timedelta(seconds=5)


class ProcessorTimeout(Exception):
    """The processor did not answer in time (it may have charged)."""


class ProcessDied(BaseException):
    """The process dies: nothing after this point runs (not even `except Exception`)."""


class FailingProcessor(SandboxProcessor):
    """The sandbox processor, failing around the charge call as `mode` says."""

    def __init__(self, services: Services, mode: str) -> None:
        inner = services.processor
        assert isinstance(inner, SandboxProcessor)
        super().__init__(inner.database, publishable_key=inner.publishable_key)
        self.mode = mode

    def charge(self, **kwargs: Any) -> Any:
        if self.mode == "unreachable":  # dies before the request leaves
            raise ProcessDied
        super().charge(**kwargs)
        if self.mode == "timeout":
            raise ProcessorTimeout
        raise ProcessDied  # "crash": charged, then died before recording


@dataclass
class Case:
    """One purpose's interrupted charge: whose, and what success means for it."""

    agent: Agent
    purpose: AttemptPurpose
    balance: Decimal  # after the charge is credited
    check_success: Callable[[], None] = lambda: None
    check_failure: Callable[[], None] = lambda: None
    credits_wallet: bool = True  # the charge is wallet credit (a subscription's is revenue)


def _fund(api: Api, services: Services, processor: SandboxProcessor) -> Case:
    agent = api.new_agent()
    with pytest.raises((ProcessorTimeout, ProcessDied)):
        wallet_funding.fund_wallet(
            services.database,
            processor,
            account_id=agent.account_id,
            amount_micros=40_000_000,
            payment_method_id=agent.card(),
            idempotency_key=f"fund-{uuid.uuid4().hex}",
        )

    def saved_card() -> None:
        cards = agent.get("/billing/payment-methods").json()["data"]["items"]
        assert len(cards) == 1  # the card is kept, as the request would have

    return Case(agent, AttemptPurpose.WALLET_FUNDING, Decimal(40), check_success=saved_card)


def _charge_amount(api: Api, services: Services, processor: SandboxProcessor) -> Case:
    agent = api.new_agent()
    agent.post("/billing/payment-methods", {"payment_method_id": agent.card()})
    with pytest.raises((ProcessorTimeout, ProcessDied)):
        wallet_funding.fund_wallet(
            services.database,
            processor,
            account_id=agent.account_id,
            amount_micros=15_000_000,
            payment_method_id=None,
            idempotency_key=f"charge-{uuid.uuid4().hex}",
            purpose="subscription_charge",
        )

    def refundable() -> None:
        balance = agent.get("/wallet/balance").json()["data"]
        assert (balance["breakdown"]["purchased"], balance["withdrawable"]) == (15, 15)

    return Case(agent, AttemptPurpose.CHARGE_AMOUNT, Decimal(15), check_success=refundable)


def _coupon_purchase(api: Api, services: Services, processor: SandboxProcessor) -> Case:
    code = bonus_coupon(api, max_redemptions=1)
    agent = api.new_agent()
    with pytest.raises((ProcessorTimeout, ProcessDied)):
        coupons.redeem(
            services.database,
            processor,
            account_id=agent.account_id,
            code=code,
            purchase_micros=20_000_000,
            payment_method_id=agent.card(),
            idempotency_key=None,
        )
    # Until the outcome is known, the reservation holds the last redemption.
    other = api.new_agent()
    info = other.get("/wallet/coupons/validate", params={"coupon_code": code}).json()["data"]
    assert info["error"]["code"] == "coupon_exhausted"

    def bonus_granted() -> None:
        balance = agent.get("/wallet/balance").json()["data"]
        assert balance["breakdown"]["promotional"] == 5
        info = other.get("/wallet/coupons/validate", params={"coupon_code": code}).json()["data"]
        assert info["error"]["code"] == "coupon_exhausted"

    def given_back() -> None:
        info = other.get(
            "/wallet/coupons/validate", params={"coupon_code": code, "purchase_amount": 20}
        ).json()["data"]
        assert info["valid"] is True, info

    return Case(
        agent,
        AttemptPurpose.COUPON_PURCHASE,
        Decimal(25),
        check_success=bonus_granted,
        check_failure=given_back,
    )


def _checkout(api: Api, services: Services, processor: SandboxProcessor) -> Case:
    agent = api.new_agent()
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 30}).json()["data"]
    session_id = link["session_id"]
    with pytest.raises((ProcessorTimeout, ProcessDied)):
        checkout.pay_with_card(
            services.database,
            processor,
            session_id=session_id,
            number=CARD_OK,
            exp_month="12",
            exp_year="2040",
            cvc="123",
        )
    body = {"session_id": session_id}
    assert agent.post("/wallet/confirm-checkout", body).status_code == 409

    def completed() -> None:
        confirmed = agent.post("/wallet/confirm-checkout", body)
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["data"]["status"] == "complete"

    def reopened() -> None:
        # The session takes another card at once (no waiting for the processing lease).
        paid = checkout.pay_with_card(
            services.database,
            services.sandbox,
            session_id=session_id,
            number=CARD_OK,
            exp_month="12",
            exp_year="2040",
            cvc="123",
        )
        assert paid.status == "complete"
        assert agent.balance() == 30

    return Case(
        agent, AttemptPurpose.CHECKOUT, Decimal(30), check_success=completed, check_failure=reopened
    )


def _auto_funding(api: Api, services: Services, processor: SandboxProcessor) -> Case:
    agent = api.new_agent()
    assert agent.fund(10).status_code == 200
    enabled = agent.put("/wallet/auto-funding", {"auto_charge_amount": 25, "charge_threshold": 5})
    assert enabled.status_code == 200, enabled.text
    assert api.charge_usage(agent.account_id, 6).status_code == 201
    with services.database.read() as session:
        row = session.scalars(
            select(Job).where(Job.account_id == agent.account_id, Job.kind == TOP_UP_JOB)
        ).one()
        job = ClaimedJob(row.id, row.kind, row.account_id, row.payload, 1, row.max_attempts)
    # The worker running the top-up job meets the failing processor.
    with pytest.raises((ProcessorTimeout, ProcessDied)):
        run_top_up(replace(services, processor=processor), job)

    def counters() -> None:
        state = agent.get("/wallet/balance").json()["data"]["auto_funding"]
        assert (state["enabled"], state["consecutive_failures"]) == (True, 0)

    def rearmed() -> None:
        state = agent.get("/wallet/balance").json()["data"]["auto_funding"]
        assert (state["enabled"], state["consecutive_failures"]) == (True, 0)
        # The job, run again, charges under a new key: the first was never made.
        Worker(services).drain()
        assert agent.balance() == 29
        [again] = _attempts(services, agent.account_id, AttemptPurpose.AUTO_FUNDING)[1:]
        assert (again.state, again.number, again.key) == ("succeeded", 2, f"job:{job.id}#2")

    return Case(
        agent,
        AttemptPurpose.AUTO_FUNDING,
        Decimal(29),
        check_success=counters,
        check_failure=rearmed,
    )


def _subscription_invoice(api: Api, services: Services, processor: SandboxProcessor) -> Case:
    plan = create_plan(api, price=14, included_credits=6)
    agent, pm = subscriber(api)
    with pytest.raises((ProcessorTimeout, ProcessDied)):
        subscriptions.start(
            replace(services, processor=processor),
            account_id=agent.account_id,
            plan_id=plan["id"],
            payment_method_id=pm,
        )
    [sub] = agent.get("/subscriptions").json()["data"]["items"]
    assert (sub["status"], sub["payment_status"]) == ("incomplete", "processing")

    def active() -> None:
        current = status(agent, sub["id"])
        assert (current["status"], current["payment_status"]) == ("active", "paid")
        assert [p.purpose for p in payments_of(services, agent.account_id)] == [
            "subscription_create"
        ]

    def still_owed() -> None:
        current = status(agent, sub["id"])
        assert (current["status"], current["payment_status"]) == ("incomplete", "pending")
        fixed = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["data"]["status"] == "active"
        assert agent.balance() == 6

    return Case(
        agent,
        AttemptPurpose.SUBSCRIPTION_INVOICE,
        Decimal(6),  # the plan's included credits: the payment itself is revenue
        check_success=active,
        check_failure=still_owed,
        credits_wallet=False,
    )


FLOWS: dict[str, Callable[[Api, Services, SandboxProcessor], Case]] = {
    "fund_wallet": _fund,
    "charge_amount": _charge_amount,
    "coupon_purchase": _coupon_purchase,
    "checkout": _checkout,
    "auto_funding": _auto_funding,
    "subscription_invoice": _subscription_invoice,
}


def _attempts(services: Services, account_id: str, purpose: AttemptPurpose) -> list[PaymentAttempt]:
    with services.database.read() as session:
        return list(
            session.scalars(
                select(PaymentAttempt)
                .where(PaymentAttempt.account_id == account_id, PaymentAttempt.purpose == purpose)
                .order_by(PaymentAttempt.number)
            )
        )


def _the_attempt(services: Services, case: Case) -> PaymentAttempt:
    [attempt] = _attempts(services, case.agent.account_id, case.purpose)
    return attempt


def _janitor(services: Services, attempt: PaymentAttempt) -> None:
    """Run the janitor job queued with the attempt, as a worker does when it falls due."""
    with services.database.read() as session:
        job = session.scalars(
            select(Job).where(Job.dedupe_key == f"attempt:{attempt.id}").order_by(Job.id.desc())
        ).first()
    assert job is not None and job.kind == attempts.JANITOR_JOB
    assert job.run_at >= attempt.created_at + attempts.STALE_AFTER  # not before its time
    age_open_attempts(services, attempt.account_id, attempts.STALE_AFTER)  # its time passed
    claimed = ClaimedJob(job.id, job.kind, job.account_id, job.payload, 1, job.max_attempts)
    handlers()[job.kind](services, claimed)


def _card_payments(services: Services, account_id: str) -> list[Payment]:
    with services.database.read() as session:
        return list(session.scalars(select(Payment).where(Payment.account_id == account_id)))


def _charges_at_processor(services: Services, key: str) -> int:
    with services.database.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(SandboxObject)
                .where(SandboxObject.idempotency_key == key)
            )
            or 0
        )


def _assert_credited_once(api: Api, services: Services, case: Case) -> None:
    attempt = _the_attempt(services, case)
    assert (attempt.state, attempt.settled_by) == ("succeeded", "janitor")
    assert case.agent.balance() == case.balance
    paid = [
        p for p in _card_payments(services, case.agent.account_id) if p.id == attempt.payment_id
    ]
    assert [p.status for p in paid] == ["succeeded"]
    assert _charges_at_processor(services, attempt.key) == 1
    if case.credits_wallet:
        history = decimal_json(case.agent.get("/wallet/transactions", params={"limit": 100}))
        credits = [
            t
            for t in history["data"]["items"]
            if t["payment_intent_id"] == attempt.payment_id and t["kind"] != "coupon_credit"
        ]
        assert [t["metadata"].get("recovered") for t in credits] == [True]
    assert api.ledger_check(case.agent.account_id)["consistent"] is True
    case.check_success()


@pytest.mark.parametrize("flow", FLOWS)
def test_a_charge_whose_processor_call_timed_out_is_credited_once_by_the_janitor(
    api: Api, services: Services, flow: str
) -> None:
    case = FLOWS[flow](api, services, FailingProcessor(services, "timeout"))
    attempt = _the_attempt(services, case)
    assert attempt.state == AttemptState.UNKNOWN
    assert case.agent.balance() == (case.balance - 25 if flow == "auto_funding" else 0)
    _janitor(services, attempt)
    _assert_credited_once(api, services, case)
    Worker(services).drain(at=now() + AFTER_STALE)  # whatever else was queued changes nothing
    _janitor(services, attempt)
    _assert_credited_once(api, services, case)


@pytest.mark.parametrize("flow", FLOWS)
def test_a_charge_whose_process_died_before_recording_is_credited_once(
    api: Api, services: Services, flow: str
) -> None:
    case = FLOWS[flow](api, services, FailingProcessor(services, "crash"))
    attempt = _the_attempt(services, case)
    assert attempt.state == AttemptState.PENDING
    assert case.agent.balance() == (case.balance - 25 if flow == "auto_funding" else 0)
    _janitor(services, attempt)
    _assert_credited_once(api, services, case)
    with services.database.read() as session:
        jobs = session.scalars(select(Job).where(Job.dedupe_key == f"attempt:{attempt.id}"))
        assert [job.status for job in jobs] == ["succeeded"]
    Worker(services).drain(at=now() + AFTER_STALE)
    _assert_credited_once(api, services, case)


@pytest.mark.parametrize("flow", FLOWS)
def test_two_janitors_racing_over_one_charge_credit_it_once(
    api: Api, services: Services, flow: str
) -> None:
    case = FLOWS[flow](api, services, FailingProcessor(services, "crash"))
    attempt = _the_attempt(services, case)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def janitor() -> None:
        try:
            barrier.wait()
            _janitor(services, attempt)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=janitor) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    _assert_credited_once(api, services, case)


@pytest.mark.parametrize("flow", FLOWS)
def test_a_charge_that_never_reached_the_processor_fails_and_gives_back(
    api: Api, services: Services, flow: str
) -> None:
    case = FLOWS[flow](api, services, FailingProcessor(services, "unreachable"))
    attempt = _the_attempt(services, case)
    assert attempt.state == AttemptState.PENDING
    before = case.agent.balance()
    _janitor(services, attempt)
    settled = _the_attempt(services, case)
    assert (settled.state, settled.failure_reason, settled.payment_id) == (
        AttemptState.FAILED,
        FailureReason.NOT_CHARGED,
        None,
    )
    assert case.agent.balance() == before == (Decimal(4) if flow == "auto_funding" else 0)
    payments = _card_payments(services, case.agent.account_id)
    assert [p for p in payments if p.purpose == attempt.payment_purpose] == []
    assert _charges_at_processor(services, attempt.key) == 0
    assert api.ledger_check(case.agent.account_id)["consistent"] is True
    case.check_failure()


def test_a_retried_request_reuses_its_attempt_and_the_processor_sees_one_charge(
    api: Api, services: Services
) -> None:
    agent = api.new_agent()
    pm = agent.card()
    with pytest.raises(ProcessorTimeout):
        wallet_funding.fund_wallet(
            services.database,
            FailingProcessor(services, "timeout"),
            account_id=agent.account_id,
            amount_micros=12_000_000,
            payment_method_id=pm,
            idempotency_key="retry-me",
        )
    # The client retries with the same key before the janitor looked: same attempt.
    retried = agent.post("/wallet/fund", {"amount": 12, "payment_method_id": pm}, key="retry-me")
    assert retried.status_code == 200, retried.text
    [attempt] = _attempts(services, agent.account_id, AttemptPurpose.WALLET_FUNDING)
    assert (attempt.state, attempt.settled_by) == ("succeeded", "request")
    assert retried.json()["data"]["payment_intent_id"] == attempt.payment_id
    assert _charges_at_processor(services, attempt.key) == 1
    _janitor(services, attempt)  # too late: nothing to do
    assert agent.balance() == 12
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_a_recovery_job_queued_before_the_machine_settles_through_it(
    api: Api, services: Services
) -> None:
    """A database upgraded with a recovery job of the previous design still queued."""
    agent = api.new_agent()
    pm = agent.card()
    key = f"fund:{agent.account_id}:legacy"
    customer = ensure_customer(services.database, services.processor, agent.account_id)
    services.processor.charge(
        customer_id=customer,
        payment_method_id=pm,
        amount_cents=1800,
        currency="USD",
        idempotency_key=key,
        description="Wallet funding",
    )
    with services.database.transaction() as session:
        enqueue(
            session,
            kind=janitor.LEGACY_RECOVERY_JOB,
            account_id=agent.account_id,
            payload={
                "account_id": agent.account_id,
                "purpose": "wallet_funding",
                "amount_micros": 18_000_000,
                "currency": "USD",
                "payment_method_id": pm,
                "processor_key": key,
                "save_card": True,
                "checkout_session_id": None,
                "coupon_redemption_id": None,
                "plan_id": None,
            },
            dedupe_key=f"recover:{key}",
        )
    Worker(services).drain()
    Worker(services).drain()
    assert agent.balance() == 18
    [attempt] = _attempts(services, agent.account_id, AttemptPurpose.WALLET_FUNDING)
    assert (attempt.key, attempt.state, attempt.settled_by) == (key, "succeeded", "janitor")
    assert len(_card_payments(services, agent.account_id)) == 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_a_settle_job_queued_before_the_machine_settles_through_it(
    api: Api, services: Services
) -> None:
    """An invoice whose attempt was reserved the previous way (its key on the invoice,
    a settle job queued, no attempt row) when the process died after the charge."""
    plan = create_plan(api, price=9, included_credits=2)
    agent, pm = subscriber(api)
    with services.database.transaction() as session:
        chosen = subscribable_plan(
            session, plan["id"], kinds=SELF_SERVE_KINDS, account_id=agent.account_id
        )
        sub = subscriptions.new_subscription(
            session, account_id=agent.account_id, plan=chosen, created_by="agent", trial=False
        )
        invoice = engine.open_invoice(
            session,
            sub,
            reason=BillingReason.CREATE,
            lines=[engine.period_line(chosen, sub.current_period_start, sub.current_period_end)],
            source=f"subscription:{sub.id}:create",
        )
        invoice.attempt_count = 1
        invoice.attempt_key = key = f"{invoice.id}:1"
        invoice.attempt_payment_method_id = pm
        invoice.meta = {"attempt_trigger": "create"}
        enqueue(
            session,
            kind=SETTLE_JOB,
            account_id=agent.account_id,
            payload={"invoice_id": invoice.id, "key": key},
            dedupe_key=f"settle:{key}",
        )
        sub_id = sub.id
    customer = ensure_customer(services.database, services.processor, agent.account_id)
    services.processor.charge(
        customer_id=customer,
        payment_method_id=pm,
        amount_cents=900,
        currency="USD",
        idempotency_key=key,
        description="Subscription",
    )
    Worker(services).drain()
    current = status(agent, sub_id)
    assert (current["status"], current["payment_status"]) == ("active", "paid")
    [attempt] = _attempts(services, agent.account_id, AttemptPurpose.SUBSCRIPTION_INVOICE)
    assert (attempt.key, attempt.state, attempt.settled_by) == (key, "succeeded", "janitor")
    assert agent.balance() == 2
    assert len(payments_of(services, agent.account_id)) == 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_the_sweep_settles_what_is_left_open_and_stays_queued_once(
    api: Api, services: Services
) -> None:
    case = _fund(api, services, FailingProcessor(services, "crash"))
    attempt = _the_attempt(services, case)
    janitor.sweep(services, at=now())
    assert _the_attempt(services, case).state == AttemptState.PENDING  # not stale yet
    assert janitor.sweep(services, at=now() + AFTER_STALE) >= 1
    settled = _the_attempt(services, case)
    assert (settled.state, settled.settled_by) == ("succeeded", "janitor")
    assert case.agent.balance() == 40
    with services.database.transaction() as session:
        janitor.schedule_sweep(session)
        janitor.schedule_sweep(session)
    with services.database.read() as session:
        sweeps = session.scalars(
            select(Job).where(Job.kind == attempts.JANITOR_JOB, Job.account_id.is_(None))
        ).all()
    assert len([job for job in sweeps if job.status == "queued"]) == 1
    with services.database.read() as session:  # its own job was cancelled with the recording
        [own] = session.scalars(select(Job).where(Job.dedupe_key == f"attempt:{attempt.id}"))
        assert own.status == "succeeded"
