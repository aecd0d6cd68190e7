"""Renewals handed over together (`renewal.prepare_renewals`): the plain ones roll and
reserve their first attempts in one transaction, the rest renew one at a time, and
every subscription ends up as a renewal on its own would leave it. Both databases."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from sqlalchemy import select

from billfold.application.jobs import Worker
from billfold.clock import wall_now
from billfold.jobs import service as jobs
from billfold.jobs.models import Job, Lane
from billfold.jobs.service import ClaimedJob
from billfold.payments import attempts as payment_attempts
from billfold.payments.models import FailureReason, PaymentAttempt
from billfold.processors.sandbox import SandboxObject
from billfold.services import Services
from billfold.subscriptions import engine, renewal
from tests.helpers import CARD_ATTACH_THEN_FAIL, Api, TestClock
from tests.subscription_helpers import (
    advance_to,
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
AFTER_THE_END = timedelta(minutes=2)


class Subscribed:
    """An agent on a test clock with a subscription, and the card it subscribed with."""

    def __init__(self, api: Api, clock: TestClock | None, plan: dict[str, Any]) -> None:
        self.agent, self.card = subscriber(api, clock)
        self.subscription = subscribe(self.agent, plan["id"], self.card)
        self.id: str = self.subscription["id"]

    def status(self) -> dict[str, Any]:
        return status(self.agent, self.id)


def _subscribers(api: Api, clock: TestClock, plan: dict[str, Any], count: int) -> list[Subscribed]:
    """`count` subscribers of `plan` on `clock`, whose periods end together."""
    return [Subscribed(api, clock, plan) for _ in range(count)]


def _due_together(api: Api, price: int, count: int) -> tuple[TestClock, list[Subscribed], datetime]:
    """`count` subscribers of a new plan at `price` on a new clock, which stops a minute
    before the first of their periods ends; the end."""
    plan = create_plan(api, price=price)
    clock = api.new_clock()
    subscribed = _subscribers(api, clock, plan, count)
    end = instant(subscribed[0].subscription["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))
    return clock, subscribed, end


def _claim_renewals(services: Services, clock: TestClock) -> list[ClaimedJob]:
    with services.database.transaction() as session:
        return jobs.claim(
            session,
            worker_id="test-batch",
            limit=50,
            test_clock_id=clock.id,
            kind=engine.RENEW_JOB,
        )


def test_plain_renewals_roll_together_and_the_others_renew_alone(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=20, included_credits=3)
    cheaper = create_plan(api, price=8)
    clock = api.new_clock()
    plain = _subscribers(api, clock, plan, 3)
    declined, canceling, downgrading, cardless = _subscribers(api, clock, plan, 4)
    set_default_card(api, declined.agent, CARD_ATTACH_THEN_FAIL)
    ended = canceling.agent.post(f"/subscriptions/{canceling.id}/cancel", {"at_period_end": True})
    assert ended.status_code == 200, ended.text
    changed = downgrading.agent.put(
        f"/subscriptions/{downgrading.id}", {"new_plan_id": cheaper["id"]}
    )
    assert changed.status_code == 200, changed.text
    removed = cardless.agent.delete(f"/billing/payment-methods/{cardless.card}")
    assert removed.status_code == 200, removed.text
    end = instant(plain[0].subscription["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))

    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        assert len(claimed) == 7
        rest = renewal.prepare_renewals(services, claimed)
        by_sub = {job.payload["subscription_id"]: rest[job.id] for job in claimed}
        together = [*plain, declined]
        for one in together:
            step = by_sub[one.id]
            assert isinstance(step, partial) and step.func is renewal.charge_reserved
        for one in (canceling, downgrading, cardless):
            step = by_sub[one.id]
            assert isinstance(step, partial) and step.func is renewal.run_renewal

        # Rolled and reserved, not charged yet: one open invoice each, numbered in one run
        # of the series, its first attempt pending under the invoice's own key.
        opened = [invoices_of(services, one.agent.account_id)[-1] for one in together]
        assert [(i.billing_reason, i.status, i.attempt_count) for i in opened] == [
            ("subscription_cycle", "open", 1)
        ] * 4
        numbers = sorted(int(i.number.rsplit("-", 1)[1]) for i in opened)
        assert numbers == list(range(numbers[0], numbers[0] + 4))
        with services.database.read() as session:
            pending = {
                row.key: row.state
                for row in session.scalars(
                    select(PaymentAttempt).where(
                        PaymentAttempt.key.in_([f"{i.id}:1" for i in opened])
                    )
                )
            }
        assert pending == {f"{i.id}:1": "pending" for i in opened}
        for one in together:
            current = one.status()
            assert current["payment_status"] == "processing"

        for job in claimed:
            rest[job.id]()
        # The old period's credits expire (their own job, due at the same moment).
        Worker(services, worker_id="test-batch-rest", test_clock_id=clock.id).drain()

    for one in plain:
        current = one.status()
        assert (current["status"], current["payment_status"]) == ("active", "paid")
        assert current["current_period_start"] == one.subscription["current_period_end"]
        assert len(payments_of(services, one.agent.account_id)) == 2
        assert one.agent.balance() == D(3)  # the new period's credits; the old ones expired
        assert api.ledger_check(one.agent.account_id)["consistent"] is True
    assert declined.status()["status"] == "past_due"
    assert canceling.status()["status"] == "canceled"
    moved = downgrading.status()
    assert (moved["plan_id"], moved["status"]) == (cheaper["id"], "active")
    assert invoices_of(services, downgrading.agent.account_id)[-1].total == D(8)
    lacking = cardless.status()
    assert lacking["status"] == "past_due"
    assert lacking["latest_invoice"]["last_payment_error"]["decline_code"] == "no_payment_method"
    numbers_everywhere = [
        i.number
        for one in [*plain, declined, canceling, downgrading, cardless]
        for i in invoices_of(services, one.agent.account_id)
    ]
    assert len(set(numbers_everywhere)) == len(numbers_everywhere)


def test_renewals_rolled_together_whose_charges_never_ran_are_charged_once_later(
    api: Api, services: Services
) -> None:
    clock, agents, _ = _due_together(api, price=15, count=3)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        renewal.prepare_renewals(services, claimed)  # the worker dies before the charges
        # Claimed again (the lease ran out): the periods have rolled, so each one joins
        # its invoice's attempt in flight, alone.
        again = renewal.prepare_renewals(services, claimed)
        assert all(
            isinstance(step, partial) and step.func is renewal.run_renewal
            for step in again.values()
        )
        for job in claimed:
            again[job.id]()
    for one in agents:
        current = one.status()
        assert (current["status"], current["payment_status"]) == ("active", "paid")
        [_, cycle] = invoices_of(services, one.agent.account_id)
        assert (cycle.billing_reason, cycle.status, cycle.attempt_count) == (
            "subscription_cycle",
            "paid",
            1,
        )
        assert len(payments_of(services, one.agent.account_id)) == 2


def test_a_bad_job_among_renewals_leaves_its_neighbours_to_renew_alone(
    api: Api, services: Services
) -> None:
    clock, agents, end = _due_together(api, price=12, count=2)
    with on_clock(services, clock), services.database.transaction() as session:
        jobs.enqueue(
            session,
            kind=engine.RENEW_JOB,
            account_id=agents[0].agent.account_id,
            payload={"subscription_id": agents[0].id, "period_end": "not a time"},
            run_at=end,
        )
    with on_clock(services, clock, ahead=AFTER_THE_END):
        worker = Worker(services, worker_id="test-bad-batch", test_clock_id=clock.id)
        assert worker.run_once(limit=50) >= 3  # the batch fails; each job runs alone
    for one in agents:
        current = one.status()
        assert (current["status"], current["payment_status"]) == ("active", "paid")
        assert len(payments_of(services, one.agent.account_id)) == 2
    with services.database.read() as session:
        bad = session.scalars(
            select(Job).where(
                Job.kind == engine.RENEW_JOB,
                Job.account_id == agents[0].agent.account_id,
                Job.dedupe_key.is_(None),
            )
        ).one()
        assert (bad.status, bad.attempts) == ("queued", 1)  # to be retried; it renewed nothing
        assert bad.last_error is not None and "not a time" in bad.last_error


def test_one_renewal_claimed_twice_in_a_batch_rolls_and_charges_once(
    api: Api, services: Services
) -> None:
    clock, [one], end = _due_together(api, price=9, count=1)
    # A second job for the same renewal (as a lease taken over would leave).
    with on_clock(services, clock), services.database.transaction() as session:
        jobs.enqueue(
            session,
            kind=engine.RENEW_JOB,
            account_id=one.agent.account_id,
            payload={"subscription_id": one.id, "period_end": end.isoformat()},
            run_at=end,
        )
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        assert len(claimed) == 2
        rest = renewal.prepare_renewals(services, claimed)
        steps = sorted(step.func.__name__ for step in rest.values() if isinstance(step, partial))
        assert steps == ["charge_reserved", "run_renewal"]
        for job in claimed:
            rest[job.id]()
    current = one.status()
    assert (current["status"], current["payment_status"]) == ("active", "paid")
    cycles = [
        (i.status, i.attempt_count)
        for i in invoices_of(services, one.agent.account_id)
        if i.billing_reason == "subscription_cycle"
    ]
    assert cycles == [("paid", 1)]
    assert len(payments_of(services, one.agent.account_id)) == 2


def test_a_serving_worker_takes_due_renewals_together_for_one_thread(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=7)
    subscribed = [Subscribed(api, None, plan) for _ in range(3)]  # on real time
    # Renewal jobs due now for periods that have not ended yet: each renews nothing.
    with services.database.transaction() as session:
        for one in subscribed:
            jobs.enqueue(
                session,
                kind=engine.RENEW_JOB,
                account_id=one.agent.account_id,
                payload={
                    "subscription_id": one.id,
                    "period_end": one.subscription["current_period_end"],
                },
                run_at=wall_now() - timedelta(seconds=1),
            )
    worker = Worker(services, worker_id="test-serving-batch")
    first = worker._claim(limit=1, kind=engine.RENEW_JOB)
    assert len(first) == 1
    with ThreadPoolExecutor(1) as pool:
        tasks = worker._submit(pool, first, Lane.DEFAULT)  # claims the other two as well
        assert len(tasks) == 1
        wait(tasks)
    with services.database.read() as session:
        done = session.scalars(
            select(Job.status).where(
                Job.kind == engine.RENEW_JOB,
                Job.account_id.in_([one.agent.account_id for one in subscribed]),
                Job.locked_by == "test-serving-batch",
            )
        ).all()
    assert done == ["succeeded"] * 3  # all three, by this worker
    for one in subscribed:
        assert one.status()["current_period_end"] == one.subscription["current_period_end"]


def test_a_reserved_attempt_whose_turn_comes_too_late_is_read_again_before_any_charge(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, subscribed, _ = _due_together(api, price=11, count=2)
    # Every reserved attempt's turn comes after the deadline (as behind slow processor
    # calls), and meanwhile the janitor settled the first as never charged: that one
    # must not reach the processor under its old key; the other joins its attempt.
    monkeypatch.setattr(renewal, "CHARGE_WITHIN", timedelta(seconds=-1))
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = sorted(_claim_renewals(services, clock), key=lambda job: job.account_id or "")
        rest = renewal.prepare_renewals(services, claimed)
        reserved = [step.args[2] for step in rest.values() if isinstance(step, partial)]
        assert len(reserved) == 2
        dropped = next(a for a in reserved if a.account_id == claimed[0].account_id)
        payment_attempts.fail(
            services.database, dropped.payment, FailureReason.NOT_CHARGED, services=services
        )
        for job in claimed:
            rest[job.id]()
    with services.database.read() as session:
        charged = set(
            session.scalars(
                select(SandboxObject.idempotency_key).where(
                    SandboxObject.idempotency_key.in_([a.key for a in reserved])
                )
            )
        )
    kept = next(a for a in reserved if a is not dropped)
    assert charged == {kept.key}
    for one in subscribed:
        if one.agent.account_id == dropped.account_id:
            assert len(payments_of(services, one.agent.account_id)) == 1  # the start's only
        else:
            assert one.status()["payment_status"] == "paid"
            assert len(payments_of(services, one.agent.account_id)) == 2
