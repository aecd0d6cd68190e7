"""Per-account test clocks (Stripe's model): a clock moves only the accounts created on it
and runs only their jobs, in time order; tokens and everything else measured by other
parties stay on real time. Both databases."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from billfold.application import testclock as test_clocks
from billfold.application.jobs import Worker
from billfold.clock import now, wall_now
from billfold.errors import ErrorCode, Forbidden
from billfold.processors.stripe import StripeProcessor
from billfold.services import Services
from tests.helpers import CARD_ATTACH_THEN_FAIL, Agent, Api, TestClock, assert_error
from tests.subscription_helpers import (
    create_plan,
    instant,
    invoices_of,
    payments_of,
    set_default_card,
    status,
    subscribe,
    subscriber,
)

D = Decimal


def _subscribed(api: Api, plan: dict[str, Any], clock: TestClock | None) -> tuple[Agent, str]:
    agent, pm = subscriber(api, clock)
    return agent, subscribe(agent, plan["id"], pm)["id"]


def test_two_clocks_advanced_at_once_move_only_their_own_accounts(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=20, included_credits=5)
    first, second, still = api.new_clock(), api.new_clock(), api.new_clock()
    on_first = _subscribed(api, plan, first)
    on_second = _subscribed(api, plan, second)
    on_still = _subscribed(api, plan, still)
    on_real_time = _subscribed(api, plan, None)
    ends = {
        agent.account_id: instant(status(agent, sub)["current_period_end"])
        for agent, sub in (on_first, on_second, on_still, on_real_time)
    }
    still_before = still.now()

    barrier = threading.Barrier(2)
    moved: dict[str, dict[str, Any]] = {}

    def advance(clock: TestClock) -> None:
        barrier.wait()
        moved[clock.id] = clock.advance(days=40)

    threads = [threading.Thread(target=advance, args=(clock,)) for clock in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for clock in (first, second):
        assert instant(moved[clock.id]["now"]) >= wall_now() + timedelta(days=39, hours=23)
        assert moved[clock.id]["jobs_run"] >= 1  # its account's renewal, at least
    for agent, sub in (on_first, on_second):
        end = ends[agent.account_id]
        invoices = invoices_of(services, agent.account_id)
        assert [(i.billing_reason, i.status) for i in invoices] == [
            ("subscription_create", "paid"),
            ("subscription_cycle", "paid"),
        ]
        assert invoices[1].lines[0].period_start == end  # renewed at its period's end
        assert instant(status(agent, sub)["current_period_start"]) == end
    for agent, sub in (on_still, on_real_time):  # neither time moved
        assert [i.billing_reason for i in invoices_of(services, agent.account_id)] == [
            "subscription_create"
        ]
        current = status(agent, sub)
        assert current["status"] == "active"
        assert instant(current["current_period_end"]) == ends[agent.account_id]
        assert agent.balance() == D(5)
    assert still_before <= still.now() < still_before + timedelta(minutes=5)


def test_an_agent_token_survives_a_40_day_advance_of_its_clock(api: Api) -> None:
    clock = api.new_clock()
    agent = api.new_agent(clock=clock)  # a token for a month of real time
    clock.advance(days=40)
    assert agent.get("/wallet/balance").status_code == 200
    # Token lifetimes are real time: a new login's token expires a month from now, which
    # is before the clock's time.
    login = api.session.post(
        api.agent_url("/auth/login"), json={"email": agent.email, "password": agent.password}
    )
    assert login.status_code == 200, login.text
    expires_at = instant(login.json()["data"]["expires_at"])
    assert abs(expires_at - (wall_now() + timedelta(days=30))) < timedelta(minutes=5)
    assert expires_at < clock.now()


def test_an_advance_runs_its_due_jobs_in_time_order(api: Api, services: Services) -> None:
    """One advance over a renewal and the dunning retry it schedules: the renewal runs at
    the period's end, the retry a day later, each at its own time on the clock."""
    plan = create_plan(api, price=15)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    end = instant(sub["current_period_end"])
    set_default_card(api, agent, CARD_ATTACH_THEN_FAIL)

    clock.advance_to(end + timedelta(days=1, hours=12))
    current = status(agent, sub["id"])
    assert current["status"] == "past_due"
    assert current["latest_invoice"]["attempt_count"] == 2  # the renewal, then one retry
    renewal, retry = [p for p in payments_of(services, agent.account_id) if p.status != "succeeded"]
    assert end <= instant(renewal.created_at) < end + timedelta(minutes=5)
    day_later = end + timedelta(days=1)
    assert day_later <= instant(retry.created_at) < day_later + timedelta(minutes=5)


def test_real_time_workers_leave_a_clocks_jobs_alone(api: Api, services: Services) -> None:
    plan = create_plan(api, price=10)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    # However far ahead a real-time worker looks, the clock's renewal is not its to run.
    Worker(services).drain(at=wall_now() + timedelta(days=400))
    assert len(invoices_of(services, agent.account_id)) == 1
    clock.advance_to(instant(sub["current_period_end"]) + timedelta(minutes=5))
    assert len(invoices_of(services, agent.account_id)) == 2


def test_accounts_on_clocks_are_shown_and_found(api: Api, services: Services) -> None:
    start = wall_now() + timedelta(days=365)
    clock = api.new_clock(start)
    state = clock.state()
    assert state["id"].startswith("clock_") and state["name"].startswith("clock ")
    assert start <= instant(state["now"]) < start + timedelta(minutes=5)
    agent = api.new_agent(clock=clock)
    account = api.admin_get(f"/accounts/{agent.account_id}").json()["data"]
    assert account["test_clock_id"] == clock.id
    assert start <= instant(account["created_at"]) < start + timedelta(minutes=5)
    real = api.new_agent()
    assert api.admin_get(f"/accounts/{real.account_id}").json()["data"]["test_clock_id"] is None
    # A front end without HTTP (CLI, MCP) runs a use case on the account's time the same way.
    with test_clocks.on_account_clock(services, agent.account_id):
        assert start <= now() < start + timedelta(minutes=5)
        with test_clocks.on_account_clock(services, real.account_id):
            assert abs(now() - wall_now()) < timedelta(seconds=5)
    assert abs(now() - wall_now()) < timedelta(seconds=5)
    assert_error(api.admin_post("/test-clocks", {"frozen_time": "tomorrow"}), 422)


def _stripe(secret_key: str) -> StripeProcessor:
    return StripeProcessor(secret_key=secret_key, publishable_key="pk_x", webhook_secret=None)


def test_test_clocks_run_in_test_mode_only(services: Services) -> None:
    """The sandbox and Stripe test keys run test clocks; Stripe live keys never do."""
    assert _stripe("sk_test_abc").test_mode
    assert not _stripe("sk_live_abc").test_mode
    live = replace(services, processor=_stripe("sk_live_abc"))
    with pytest.raises(Forbidden) as refused:
        test_clocks.get_clock(live, "clock_any")
    assert refused.value.code == ErrorCode.TEST_CLOCK_UNAVAILABLE
    with services.database.transaction() as session, pytest.raises(Forbidden) as refused:
        test_clocks.open_account(
            live,
            session,
            email="never@example.com",
            password="long enough",
            currency="USD",
            test_clock_id="clock_any",
        )
    assert refused.value.code == ErrorCode.TEST_CLOCK_UNAVAILABLE


def test_operator_requests_and_hosted_pages_run_on_the_accounts_time(api: Api) -> None:
    """Whatever names the account (the agent's token, an admin body's account_id or
    payment_intent_id, a payment link's page), its records are on its clock's time."""
    start = wall_now() - timedelta(days=30)  # a clock behind real time
    clock = api.new_clock(start)
    agent = api.new_agent(clock=clock)
    funded = agent.fund(20)
    assert funded.status_code == 200, funded.text
    credit = {"account_id": agent.account_id, "amount": 5, "reason": "on the clock"}
    assert api.admin_post("/adjustments", credit).status_code == 201
    assert api.charge_usage(agent.account_id, 1).status_code == 201
    refund = {"payment_intent_id": funded.json()["data"]["payment_intent_id"], "reason": "r"}
    assert api.admin_post("/refunds", {**refund, "amount": 2}).status_code == 201
    items = agent.get("/wallet/transactions").json()["data"]["items"]
    assert len(items) == 4
    for item in items:
        assert start <= instant(item["created_at"]) < start + timedelta(minutes=5), item

    # The link expires an hour after it was made on the clock, which real time has passed;
    # its page still takes a payment, as it is open on the account's time.
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 10})
    assert link.status_code == 201, link.text
    assert instant(link.json()["data"]["expires_at"]) < wall_now()
    page = api.session.get(link.json()["data"]["payment_url"])
    assert page.status_code == 200, page.text
