"""Included credits of several accounts expiring at one moment: the worker expires them
together (`credits.prepare_expiries`, one transaction, one statement per table read),
each as it would alone; a job that cannot be done leaves the others to run alone. Both
databases."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from billfold.application.jobs import Worker
from billfold.jobs import service as jobs
from billfold.jobs.models import Job
from billfold.services import Services
from billfold.subscriptions import credits
from tests.helpers import Agent, Api, TestClock
from tests.subscription_helpers import (
    advance_to,
    create_plan,
    grants_of,
    instant,
    on_clock,
    subscribe,
    subscriber,
)

D = Decimal
AFTER_THE_END = timedelta(minutes=2)


def _three_ways(api: Api) -> tuple[TestClock, Agent, Agent, Agent]:
    """Three subscribers of a plan with 3 included credits, on one clock a minute before
    their periods end: one spent 1 of them, one holds 2 in a usage hold over the end, one
    paused its subscription (its credits do not expire while paused)."""
    plan = create_plan(api, price=20, included_credits=3)
    clock = api.new_clock()
    subscribed = []
    for _ in range(3):
        agent, card = subscriber(api, clock)
        subscribed.append((agent, subscribe(agent, plan["id"], card)))
    (spender, _), (holder, _), (pauser, paused) = subscribed
    charged = api.charge_usage(spender.account_id, "1")
    assert charged.status_code == 201, charged.text
    done = pauser.post(f"/subscriptions/{paused['id']}/pause", {})
    assert done.status_code == 200, done.text
    end = instant(paused["current_period_end"])
    advance_to(clock, end - timedelta(hours=1))
    held = api.admin_post(
        "/usage-holds",
        {"account_id": holder.account_id, "amount": "2", "usecase": "llm", "ttl_seconds": 7200},
    )
    assert held.status_code == 201, held.text
    advance_to(clock, end - timedelta(minutes=1))
    return clock, spender, holder, pauser


def _first_grant(services: Services, agent: Agent) -> tuple[str, int, int | None]:
    first = grants_of(services, agent.account_id)[0]
    return first.status, first.expired_micros, (first.meta or {}).get("held_at_expiry_micros")


def test_grants_expiring_together_expire_as_each_would_alone(api: Api, services: Services) -> None:
    clock, spender, holder, pauser = _three_ways(api)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        with services.database.transaction() as session:
            claimed = jobs.claim(
                session,
                worker_id="test-expiries",
                limit=10,
                test_clock_id=clock.id,
                kind=credits.JOB_KIND,
            )
        owners = {spender.account_id, holder.account_id, pauser.account_id}
        assert {job.account_id for job in claimed} == owners
        rest = credits.prepare_expiries(services, claimed)
        assert set(rest) == {job.id for job in claimed}
        for step in rest.values():
            assert step() is None  # nothing left to do

    assert _first_grant(services, spender) == ("expired", 2_000_000, None)
    assert spender.balance() == D(0)
    # The hold keeps 2: the bucket's 1 expires now, the held 2 are marked on the hold.
    assert _first_grant(services, holder) == ("expired", 1_000_000, 2_000_000)
    assert holder.balance() == D(0)
    assert _first_grant(services, pauser) == ("active", 0, None)
    assert pauser.balance() == D(3)
    for agent in (spender, holder, pauser):
        assert api.ledger_check(agent.account_id)["consistent"] is True


def test_an_expiry_job_that_fails_together_leaves_the_others_to_expire_alone(
    api: Api, services: Services
) -> None:
    clock, spender, holder, _ = _three_ways(api)
    with on_clock(services, clock), services.database.transaction() as session:
        end = clock.now() + timedelta(minutes=1)
        jobs.enqueue(
            session,
            kind=credits.JOB_KIND,
            account_id=None,
            payload={"account_id": "acct_nobody"},  # no such wallet: fails, together or alone
            run_at=end,
            dedupe_key=f"test-bad-expiry:{clock.id}",
        )
    with on_clock(services, clock, ahead=AFTER_THE_END):
        Worker(services, worker_id="test-expiries", test_clock_id=clock.id).run_once(limit=20)

    assert _first_grant(services, spender) == ("expired", 2_000_000, None)
    assert _first_grant(services, holder) == ("expired", 1_000_000, 2_000_000)
    with services.database.read() as session:
        bad = session.scalars(
            select(Job).where(
                Job.kind == credits.JOB_KIND, Job.payload["account_id"].as_string() == "acct_nobody"
            )
        ).one()
        assert (bad.status, bad.attempts) == ("queued", 1)  # to be retried
        assert bad.last_error is not None and "NotFound" in bad.last_error
