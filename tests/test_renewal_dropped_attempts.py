"""A renewal's payment attempt that never reached the processor (its process died between
reserving the attempt and the charge): the payment janitor settles it as never charged,
and the invoice is paid again by the trigger that made the attempt, so the subscription
neither stays open unpaid for ever nor skips its dunning. Both databases."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from billfold.application.jobs import Worker
from billfold.clock import as_utc, real_time, wall_now
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs
from billfold.jobs.models import Job
from billfold.jobs.service import ClaimedJob
from billfold.payments import attempts as payment_attempts
from billfold.payments import janitor
from billfold.payments.models import PaymentAttempt
from billfold.services import Services
from billfold.subscriptions import attempts, dunning, engine, outcomes, renewal
from tests.helpers import (
    CARD_ATTACH_THEN_FAIL,
    Agent,
    Api,
    TestClock,
    age_open_attempts,
    jobs_of,
    while_charging,
)
from tests.subscription_helpers import (
    RecordedInvoice,
    advance,
    advance_to,
    charges_at_processor,
    create_plan,
    instant,
    invoices_of,
    on_clock,
    payments_of,
    set_default_card,
    status,
    subscribe,
    subscriber,
)

D = Decimal
JANITOR_DONE = timedelta(minutes=10)  # past the janitor's check at five minutes


def _claim(services: Services, clock: TestClock, kind: str) -> list[ClaimedJob]:
    """Claim the clock's due jobs of `kind`, as a worker about to die with them would."""
    with services.database.transaction() as session:
        return jobs.claim(session, worker_id="doomed", limit=10, test_clock_id=clock.id, kind=kind)


def _reserve_and_die(services: Services, invoice_id: str, *, card: str, trigger: str) -> None:
    """What paying an invoice does up to its charge: the attempt is reserved, and the
    process dies before the processor is called; then more real time passes than the
    janitor waits for a charge that may still be on its way (the attempt aged by it)."""
    with services.database.transaction() as session:
        found = session.get(Invoice, invoice_id)
        assert found is not None and found.subscription_id is not None
        attempts.lock_subscription(session, found.subscription_id)  # the lock order
        invoice = attempts.lock_invoice(session, invoice_id)
        attempts.reserve(session, invoice, payment_method_id=card, trigger=trigger)
        account_id = invoice.account_id
    age_open_attempts(services, account_id, payment_attempts.STALE_AFTER)


def _attempts(services: Services, invoice_id: str) -> list[tuple[str, str | None]]:
    """(state, failure reason) of the invoice's payment attempts, in order."""
    with services.database.read() as session:
        rows = session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.operation.like(f"{invoice_id}:%"))
            .order_by(PaymentAttempt.operation)  # <invoice>:<n>, fewer than ten here
        ).all()
        return [(row.state, row.failure_reason) for row in rows]


def test_a_renewal_whose_attempt_never_reached_the_processor_is_paid_again(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=20, included_credits=3)
    clock = api.new_clock()
    agent, card = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], card)
    end = instant(sub["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))
    with on_clock(services, clock, ahead=timedelta(minutes=2)):
        [job] = _claim(services, clock, engine.RENEW_JOB)  # its worker dies: still running
        [(_, rest)] = renewal.prepare_renewals(services, [job]).items()
        del rest  # the period is rolled and its invoice open; its payment never runs
        [_, cycle] = invoices_of(services, agent.account_id)
        _reserve_and_die(services, cycle.id, card=card, trigger="renewal")
    assert status(agent, sub["id"])["payment_status"] == "processing"

    advance(clock, seconds=int((JANITOR_DONE + timedelta(minutes=1)).total_seconds()))
    current = status(agent, sub["id"])
    assert (current["status"], current["payment_status"]) == ("active", "paid")
    [_, cycle] = invoices_of(services, agent.account_id)
    assert (cycle.status, cycle.attempt_count) == ("paid", 2)
    assert _attempts(services, cycle.id) == [("failed", "not_charged"), ("succeeded", None)]
    assert len(payments_of(services, agent.account_id)) == 2  # the start and this renewal
    assert agent.balance() == D(3)  # the new period's credits, granted once
    assert api.ledger_check(agent.account_id)["consistent"] is True

    # The next period renews as usual.
    advance_to(clock, instant(current["current_period_end"]) + timedelta(minutes=2))
    assert [i.status for i in invoices_of(services, agent.account_id)] == ["paid"] * 3


def test_a_dunning_retry_that_never_reached_the_processor_is_tried_again_and_dunning_goes_on(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=9)
    clock = api.new_clock()
    agent, card = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], card)
    end = instant(sub["current_period_end"])
    declining = set_default_card(api, agent, CARD_ATTACH_THEN_FAIL)
    advance_to(clock, end + timedelta(minutes=2))
    assert status(agent, sub["id"])["status"] == "past_due"
    [_, cycle] = invoices_of(services, agent.account_id)
    first_retry = _queued_retry(services, cycle.id, step=0)
    assert first_retry is not None

    advance_to(clock, first_retry - timedelta(minutes=1))
    with on_clock(services, clock, ahead=timedelta(minutes=2)):
        [job] = _claim(services, clock, dunning.RETRY_JOB)
        assert job.payload == {"invoice_id": cycle.id, "step": 0}
        _reserve_and_die(services, cycle.id, card=declining, trigger="retry:0")

    advance(clock, seconds=int((JANITOR_DONE + timedelta(minutes=1)).total_seconds()))
    # Tried again as the first retry: declined, so the second retry is queued.
    assert _attempts(services, cycle.id) == [
        ("failed", "declined"),
        ("failed", "not_charged"),
        ("failed", "declined"),
    ]
    assert _queued_retry(services, cycle.id, step=1) is not None
    assert status(agent, sub["id"])["status"] == "past_due"

    # A pay-again job for an attempt that is no longer the last one does nothing.
    with on_clock(services, clock):
        outcomes.run_pay_again(
            services,
            ClaimedJob(
                0,
                outcomes.PAY_AGAIN_JOB,
                agent.account_id,
                {"invoice_id": cycle.id, "after_attempt": 2, "trigger": "retry:0"},
                1,
                1,
                clock.id,
            ),
        )
    assert len(_attempts(services, cycle.id)) == 3


def test_a_declined_fix_payment_before_the_pay_again_job_does_not_stop_dunning(
    api: Api, services: Services
) -> None:
    """A dunning retry's attempt never reached the processor; before the pay-again job
    runs, the agent's fix-payment is declined (it schedules no retry). The pay-again job
    still makes the retry it stands for, whose failure queues the next one."""
    agent, clock, sub, cycle = _dunning_retry_dropped(api, services)
    fixed = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
    assert fixed.status_code == 402, fixed.text
    advance(clock, seconds=600)  # the pay-again job
    assert _attempts(services, cycle.id) == [
        ("failed", "declined"),
        ("failed", "not_charged"),
        ("failed", "declined"),  # fix-payment
        ("failed", "declined"),  # the first retry, made again
    ]
    assert _queued_retry(services, cycle.id, step=1) is not None


def test_a_renewal_run_again_charges_its_open_attempt_and_the_janitor_meanwhile_waits(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal job's worker died after reserving the attempt; the job runs again once
    its lease is out, just when the janitor's check falls due, and the janitor looks
    while that run's charge is on its way: it must not settle the attempt as never
    charged (a second charge would follow under a new key)."""
    agent, clock, sub, job, invoice_id = _died_after_reserving(api, services)
    [attempt_id] = [row.id for row in _attempt_rows(services, invoice_id)]

    janitor_job = ClaimedJob(
        0, janitor.JANITOR_JOB, agent.account_id, {"attempt_id": attempt_id}, 1, 8, clock.id
    )
    with (
        while_charging(
            monkeypatch, services, lambda: janitor.run_janitor(services, janitor_job)
        ) as charged,
        on_clock(services, clock, ahead=timedelta(minutes=8)),  # past the janitor's check
    ):
        renewal.run_renewal(services, job)

    assert charged == [f"{invoice_id}:1"]
    assert _attempts(services, invoice_id) == [("succeeded", None)]
    assert charges_at_processor(services, invoice_id) == 1
    assert jobs_of(services, agent.account_id, outcomes.PAY_AGAIN_JOB) == 0
    current = status(agent, sub["id"])
    assert (current["status"], current["payment_status"]) == ("active", "paid")
    assert len(payments_of(services, agent.account_id)) == 2


def test_a_renewal_run_again_after_the_janitor_settled_its_attempt_charges_nothing(
    api: Api, services: Services
) -> None:
    """The other order: the janitor settled the attempt as never charged first, so the
    job run again does not charge under that key; the pay-again job pays, once."""
    agent, clock, _, job, invoice_id = _died_after_reserving(api, services)
    [attempt] = _attempt_rows(services, invoice_id)
    with on_clock(services, clock, ahead=timedelta(minutes=8)):
        outcome = janitor.settle(services, attempt.id)
        assert outcome is not None and outcome.recorded
        # The old run's charge, had it read the attempt open before, finds it settled.
        stale = payment_attempts.Attempt.of(attempt)
        replayed = payment_attempts.run(
            services.database, services.processor, stale, description="late", services=services
        )
        assert not replayed.recorded
        renewal.run_renewal(services, job)  # finds nothing to roll or pay
    assert charges_at_processor(services, invoice_id) == 0
    advance(clock, seconds=600)  # the pay-again job (queued at the time it was settled)
    [_, cycle] = invoices_of(services, agent.account_id)
    assert (cycle.status, cycle.attempt_count) == ("paid", 2)
    assert charges_at_processor(services, invoice_id) == 1


def test_a_clock_advanced_during_a_run_again_charge_lets_the_janitor_settle_nothing(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job run again is charging when someone advances the clock a day: every check
    of the janitor that falls due on the clock runs a moment of real time after that
    charge began, so none settles the attempt as never charged (the wait is real time)."""
    agent, clock, _, job, invoice_id = _died_after_reserving(api, services)
    with (
        while_charging(monkeypatch, services, lambda: advance(clock, days=1)) as charged,
        on_clock(services, clock, ahead=timedelta(minutes=8)),
    ):
        renewal.run_renewal(services, job)
    advance(clock, days=1)
    assert charged == [f"{invoice_id}:1"]
    assert charges_at_processor(services, invoice_id) == 1
    assert _attempts(services, invoice_id) == [("succeeded", None)]
    assert len(payments_of(services, agent.account_id)) == 2


def test_the_real_time_sweep_waits_for_a_charge_of_an_account_on_a_clock_in_the_past(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An account on a clock two months back: its attempts' times are far behind real
    time, but the sweep (on real time) measures the charge's start in real time, and
    settles each attempt on its account's clock."""
    new_clock = api.new_clock
    monkeypatch.setattr(api, "new_clock", lambda: new_clock(wall_now() - timedelta(days=60)))
    _, clock, _, job, invoice_id = _died_after_reserving(api, services)
    seen: list[list[tuple[str, str | None]]] = []

    def sweep() -> None:
        with real_time():
            janitor.sweep(services)  # (what it settles of other tests' leftovers is theirs)
        seen.append(_attempts(services, invoice_id))

    with (
        while_charging(monkeypatch, services, sweep) as charged,
        on_clock(services, clock, ahead=timedelta(minutes=3)),
    ):
        renewal.run_renewal(services, job)
    assert len(charged) == 1
    with real_time():
        Worker(services).drain()
    advance(clock, hours=1)
    assert seen == [[("pending", None)]]  # the sweep left this charge in flight alone
    assert charges_at_processor(services, invoice_id) == 1
    assert _attempts(services, invoice_id) == [("succeeded", None)]


def test_a_pay_again_job_waits_for_a_fix_payment_in_flight(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pay-again job runs while the agent's fix-payment is charging: it does not give
    up (the fix is declined and schedules no retry), it runs again later and makes the
    retry it stands for."""
    agent, clock, sub, cycle = _dunning_retry_dropped(api, services)
    pay_again = ClaimedJob(
        0,
        outcomes.PAY_AGAIN_JOB,
        agent.account_id,
        {"invoice_id": cycle.id, "after_attempt": 2, "trigger": "retry:0"},
        1,
        8,
        clock.id,
    )
    refused: list[Exception] = []

    def pay_again_runs() -> None:
        with on_clock(services, clock, ahead=timedelta(minutes=9)):
            try:
                outcomes.run_pay_again(services, pay_again)
            except attempts.AttemptInFlight as exc:
                refused.append(exc)

    with while_charging(monkeypatch, services, pay_again_runs) as charged:
        fixed = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
    assert fixed.status_code == 402, fixed.text
    assert len(charged) == 1
    assert len(refused) == 1  # the job's retry runs it again
    with on_clock(services, clock, ahead=timedelta(minutes=10)):
        outcomes.run_pay_again(services, pay_again)
    assert [state for state, _ in _attempts(services, cycle.id)] == ["failed"] * 4
    assert _queued_retry(services, cycle.id, step=1) is not None


def test_a_pay_again_job_outlasts_a_clock_advanced_while_a_fix_payment_charges(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock is advanced a day while the agent's fix-payment charges: the pay-again
    job meets that attempt in flight on each of its retries in the advance, and still
    has retries left once the fix is declined, so dunning runs to its end."""
    agent, clock, sub, _ = _dunning_retry_dropped(api, services)
    with while_charging(monkeypatch, services, lambda: advance(clock, days=1)):
        fixed = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
    assert fixed.status_code == 402, fixed.text
    advance(clock, days=40)
    assert status(agent, sub["id"])["status"] == "canceled"  # dunning's end (all declined)


def _dunning_retry_dropped(
    api: Api, services: Services
) -> tuple[Agent, TestClock, dict[str, Any], RecordedInvoice]:
    """A subscriber whose renewal was declined (the card still declines), and whose first
    dunning retry's worker died after reserving its attempt; the janitor then settled
    that attempt as never charged (a pay-again job queued, not run): the agent, the
    clock, the subscription and the renewal invoice."""
    plan = create_plan(api, price=9)
    clock = api.new_clock()
    agent, card = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], card)
    declining = set_default_card(api, agent, CARD_ATTACH_THEN_FAIL)
    advance_to(clock, instant(sub["current_period_end"]) + timedelta(minutes=2))
    [_, cycle] = invoices_of(services, agent.account_id)
    first_retry = _queued_retry(services, cycle.id, step=0)
    assert first_retry is not None
    advance_to(clock, first_retry - timedelta(minutes=1))
    with on_clock(services, clock, ahead=timedelta(minutes=2)):
        _claim(services, clock, dunning.RETRY_JOB)  # its worker dies
        _reserve_and_die(services, cycle.id, card=declining, trigger="retry:0")
    [attempt] = _attempt_rows(services, cycle.id)[1:]
    with on_clock(services, clock, ahead=timedelta(minutes=9)):
        outcome = janitor.settle(services, attempt.id)  # never charged: pay-again queued
        assert outcome is not None and outcome.recorded
    return agent, clock, sub, cycle


def _died_after_reserving(
    api: Api, services: Services
) -> tuple[Agent, TestClock, dict[str, Any], ClaimedJob, str]:
    """A subscriber whose renewal job's worker rolled the period and reserved the
    attempt, then died (the job still running): the agent, the clock, the subscription,
    the job and the invoice."""
    plan = create_plan(api, price=20)
    clock = api.new_clock()
    agent, card = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], card)
    end = instant(sub["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))
    with on_clock(services, clock, ahead=timedelta(minutes=2)):
        [job] = _claim(services, clock, engine.RENEW_JOB)
        with services.database.transaction() as session:
            invoice_id = renewal.roll_period(session, engine.lock(session, sub["id"]), end)
            assert invoice_id is not None
        _reserve_and_die(services, invoice_id, card=card, trigger="renewal")
    return agent, clock, sub, job, invoice_id


def _attempt_rows(services: Services, invoice_id: str) -> list[PaymentAttempt]:
    with services.database.read() as session:
        return list(
            session.scalars(
                select(PaymentAttempt)
                .where(PaymentAttempt.operation.like(f"{invoice_id}:%"))
                .order_by(PaymentAttempt.operation)
            )
        )


def _queued_retry(services: Services, invoice_id: str, *, step: int) -> datetime | None:
    """When dunning retry `step` of the invoice is queued to run, if it is."""
    with services.database.read() as session:
        job = session.scalars(
            select(Job).where(
                Job.dedupe_key == f"dunning:{invoice_id}:{step}", Job.status == "queued"
            )
        ).one_or_none()
        return None if job is None else as_utc(job.run_at)
