"""Subscriptions lived through on the test clock, Kill Bill style: every step asserts the
exact invoices (lines, periods, amounts), ledger postings, credits and webhook events.
Both databases."""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billfold.services import Services
from billfold.subscriptions.periods import add_periods
from tests.conftest import LiveServer, Receiver
from tests.helpers import (
    CARD_ATTACH_THEN_FAIL,
    CARD_DECLINED,
    CARD_OK,
    CARD_REQUIRES_AUTH,
    Api,
    assert_error,
    decimal_json,
)
from tests.subscription_helpers import (
    FAR_EXPIRY,
    advance,
    advance_to,
    create_plan,
    events_of,
    grants_of,
    instant,
    invoices_of,
    ledger_of,
    listen_to_every_event,
    next_occurrence,
    payments_of,
    set_default_card,
    status,
    subscribe,
    subscriber,
)
from tests.test_invoices import _pdf_text

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")

D = Decimal


@pytest.fixture(scope="module", autouse=True)
def listening(api_module: Api, live_server: LiveServer, receiver: Receiver) -> Iterator[None]:
    """An endpoint for every event, so events are written and can be asserted."""
    yield from listen_to_every_event(
        api_module, live_server.services, receiver.url + receiver.path()
    )


def last_day(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def month_end_dates(start: datetime, count: int) -> list[datetime]:
    """From a month's last day: the last day of each following month (the spec's rule:
    Jan 31 renews Feb 28 or 29, then Mar 31), computed from the calendar."""
    out = []
    year, month = start.year, start.month
    for _ in range(count):
        month += 1
        if month > 12:
            year, month = year + 1, 1
        out.append(start.replace(year=year, month=month, day=last_day(year, month)))
    return out


def test_a_year_of_a_monthly_subscription_from_jan_31(api: Api, services: Services) -> None:
    plan = create_plan(api, name="Monthly 20", price=20, included_credits=10)
    clock = api.new_clock(next_occurrence(1, 31))
    agent, pm = subscriber(api, clock)

    sub = subscribe(agent, plan["id"], pm)
    assert sub["status"] == "active"
    start = instant(sub["current_period_start"])
    assert (start.month, start.day) == (1, 31)
    ends = month_end_dates(start, 13)
    assert instant(sub["current_period_end"]) == ends[0]
    assert sub["latest_invoice"]["status"] == "paid"
    assert sub["payment_status"] == "paid"

    [first] = invoices_of(services, agent.account_id)
    assert (first.status, first.billing_reason, first.total) == ("paid", "subscription_create", 20)
    [line] = first.lines
    assert (line.kind, line.amount, line.period_start, line.period_end) == (
        "subscription",
        D(20),
        start,
        ends[0],
    )
    assert ledger_of(services, agent.account_id) == [
        ("subscription_payment", {"processor:clearing": D(-20), "revenue:subscriptions": D(20)}),
        (
            "subscription_credit_grant",
            {"wallet:subscription": D(10), "subscription:grants": D(-10)},
        ),
    ]
    # Spend 4 of the 10 included credits: the other 6 expire with the period.
    assert api.charge_usage(agent.account_id, 4).status_code == 201
    assert agent.balance() == D(6)

    period_start = start
    for month, end in enumerate(ends[:12], start=1):
        advance_to(clock, end + timedelta(hours=1))
        current = status(agent, sub["id"])
        assert current["status"] == "active", (month, current)
        assert instant(current["current_period_start"]) == end
        assert instant(current["current_period_end"]) == ends[month]
        invoices = invoices_of(services, agent.account_id)
        assert len(invoices) == 1 + month
        renewal = invoices[-1]
        assert (renewal.status, renewal.billing_reason, renewal.total, renewal.amount_paid) == (
            "paid",
            "subscription_cycle",
            D(20),
            D(20),
        )
        [line] = renewal.lines
        assert (line.period_start, line.period_end, line.amount) == (end, ends[month], D(20))
        # The period's credits: the old grant expired (what was left of it), a new one.
        assert agent.balance() == D(10)
        period_start = end
    assert period_start == ends[11]

    grants = grants_of(services, agent.account_id)
    assert len(grants) == 13
    assert [g.expired_micros for g in grants[:12]] == [6_000_000] + [10_000_000] * 11
    assert [g.status for g in grants] == ["expired"] * 12 + ["active"]
    numbers = [i.number for i in invoices_of(services, agent.account_id)]
    assert len(set(numbers)) == 13
    assert len(payments_of(services, agent.account_id)) == 13
    assert (
        events_of(services, agent.account_id)
        == ["subscription.created"] + ["subscription.renewed"] * 12
    )
    # Every ledger entry of the year, in order: at each period end the old credits
    # expire (6 of the first period's were left, then all 10), the card pays, new
    # credits land.
    payment = (
        "subscription_payment",
        {"processor:clearing": D(-20), "revenue:subscriptions": D(20)},
    )
    grant = (
        "subscription_credit_grant",
        {"wallet:subscription": D(10), "subscription:grants": D(-10)},
    )

    def expiry(amount: int) -> tuple[str, dict[str, Decimal]]:
        return (
            "subscription_credit_expiry",
            {"wallet:subscription": D(-amount), "subscription:grants": D(amount)},
        )

    usage = ("usage_charge", {"wallet:subscription": D(-4), "revenue:usage": D(4)})
    expected = [payment, grant, usage]
    for month in range(1, 13):
        expected += [expiry(6 if month == 1 else 10), payment, grant]
    assert ledger_of(services, agent.account_id) == expected
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_yearly_plan_renews_once_a_year(api: Api, services: Services) -> None:
    plan = create_plan(api, name="Yearly", price=200, period="year", included_credits=100)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    start = instant(sub["current_period_start"])
    end = add_periods(start, "year", 1)
    assert instant(sub["current_period_end"]) == end

    advance_to(clock, end - timedelta(days=1))
    assert len(invoices_of(services, agent.account_id)) == 1
    assert status(agent, sub["id"])["current_period_end"] == sub["current_period_end"]

    advance_to(clock, end + timedelta(minutes=5))
    invoices = invoices_of(services, agent.account_id)
    assert [(i.billing_reason, i.total, i.status) for i in invoices] == [
        ("subscription_create", D(200), "paid"),
        ("subscription_cycle", D(200), "paid"),
    ]
    assert invoices[1].lines[0].period_start == end
    assert invoices[1].lines[0].period_end == add_periods(start, "year", 2)
    assert agent.balance() == D(100)


@pytest.fixture(scope="module")
def api_module(live_server: Any) -> Api:
    from tests.conftest import api_for

    return api_for(live_server)


def _unused(
    price: Decimal, start: datetime, end: datetime, at: datetime, rounding: str = "ROUND_HALF_UP"
) -> Decimal:
    """Independent arithmetic: price x remaining seconds / period seconds, to the cent
    (an upgrade's proration lines round half up; unused time returned when a period's
    credits end — reset, cancel now — rounds down)."""
    total = int((end - start).total_seconds())
    remaining = int((end - at).total_seconds())
    micros = int(price * 1_000_000) * remaining // total
    return (Decimal(micros) / 1_000_000).quantize(Decimal("0.01"), rounding=rounding)


def test_upgrade_now_prorated_to_the_second_and_downgrade_at_period_end(
    api: Api, services: Services
) -> None:
    basic = create_plan(api, name="Basic", price=30, included_credits=10)
    pro = create_plan(api, name="Pro", price=60, included_credits=40)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, basic["id"], pm)
    start, end = instant(sub["current_period_start"]), instant(sub["current_period_end"])

    advance(clock, days=10)
    upgraded = agent.put(f"/subscriptions/{sub['id']}", {"new_plan_id": pro["id"]})
    assert upgraded.status_code == 200, upgraded.text
    data = decimal_json(upgraded)["data"]
    assert (data["plan_id"], data["status"]) == (pro["id"], "active")
    assert data["scheduled_change"] is None
    assert instant(data["current_period_end"]) == end  # an upgrade keeps the period

    invoices = invoices_of(services, agent.account_id)
    assert [i.billing_reason for i in invoices] == ["subscription_create", "subscription_update"]
    change = invoices[-1]
    credit, charge = change.lines
    at = credit.period_start
    assert at is not None
    assert start + timedelta(days=10) <= at < start + timedelta(days=10, minutes=1)
    assert (credit.kind, credit.period_end, charge.period_start, charge.period_end) == (
        "proration",
        end,
        at,
        end,
    )
    assert credit.amount == -_unused(D(30), start, end, at)
    assert charge.amount == _unused(D(60), start, end, at)
    assert change.total == charge.amount + credit.amount
    assert (change.status, change.amount_paid) == ("paid", change.total)
    text, _ = _pdf_text(agent, change.id)
    assert "Unused time on Basic" in text and "Remaining time on Pro" in text
    assert f"-${-credit.amount:.2f}" in text.replace(",", "")
    assert "PAID" in text
    # Included credits: the difference, prorated to the second, as subscription credit.
    [_, upgrade_grant] = grants_of(services, agent.account_id)
    total_s = int((end - start).total_seconds())
    remaining_s = int((end - at).total_seconds())
    assert upgrade_grant.amount_micros == 30_000_000 * remaining_s // total_s
    assert agent.balance() == D(10) + Decimal(upgrade_grant.amount_micros) / 1_000_000

    downgraded = agent.put(f"/subscriptions/{sub['id']}", {"new_plan_id": basic["id"]})
    assert downgraded.status_code == 200, downgraded.text
    data = decimal_json(downgraded)["data"]
    assert data["plan_id"] == pro["id"]
    assert data["scheduled_change"]["plan_id"] == basic["id"]
    assert instant(data["scheduled_change"]["effective_at"]) == end
    assert len(invoices_of(services, agent.account_id)) == 2  # nothing billed now

    advance_to(clock, end + timedelta(hours=1))
    after = status(agent, sub["id"])
    assert (after["plan_id"], after["scheduled_change"]) == (basic["id"], None)
    renewal = invoices_of(services, agent.account_id)[-1]
    assert (renewal.billing_reason, renewal.total) == ("subscription_cycle", D(30))
    assert events_of(services, agent.account_id) == [
        "subscription.created",
        "subscription.updated",  # upgrade
        "subscription.updated",  # downgrade scheduled
        "subscription.renewed",
    ]
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_pause_across_a_renewal_then_resume(api: Api, services: Services) -> None:
    plan = create_plan(api, price=25, included_credits=5)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    end = instant(sub["current_period_end"])

    advance(clock, days=10)
    paused = agent.post(f"/subscriptions/{sub['id']}/pause")
    assert paused.status_code == 200, paused.text
    paused_at = instant(paused.json()["data"]["paused_at"])
    again = agent.post(f"/subscriptions/{sub['id']}/pause")
    assert_error(again, 409, "subscription_already_paused")

    advance_to(clock, end + timedelta(days=15))  # well past the period end
    assert len(invoices_of(services, agent.account_id)) == 1  # no renewal while paused
    assert agent.balance() == D(5)  # no credit expiry while paused
    assert status(agent, sub["id"])["status"] == "paused"

    resumed = agent.post(f"/subscriptions/{sub['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    data = resumed.json()["data"]
    resumed_at = instant(data["current_period_end"]) - (end - paused_at)
    new_end = instant(data["current_period_end"])
    # The remaining time (end - paused_at) is restored from the moment of resuming.
    assert abs((resumed_at - (end + timedelta(days=15))).total_seconds()) < 60
    assert data["status"] == "active"
    assert_error(agent.post(f"/subscriptions/{sub['id']}/resume"), 409, "subscription_not_paused")

    advance_to(clock, new_end - timedelta(hours=1))
    assert len(invoices_of(services, agent.account_id)) == 1
    advance_to(clock, new_end + timedelta(hours=1))
    invoices = invoices_of(services, agent.account_id)
    assert [i.billing_reason for i in invoices] == ["subscription_create", "subscription_cycle"]
    assert invoices[-1].lines[0].period_start == new_end
    [first_grant, second_grant] = grants_of(services, agent.account_id)
    assert first_grant.status == "expired"
    assert abs((first_grant.expired_at - new_end).total_seconds()) < 5  # type: ignore[operator]
    assert second_grant.status == "active"
    assert events_of(services, agent.account_id) == [
        "subscription.created",
        "subscription.paused",
        "subscription.resumed",
        "subscription.renewed",
    ]


def test_reset_cycle_credits_the_unused_time(api: Api, services: Services) -> None:
    plan = create_plan(api, price=30, included_credits=10)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    start, end = instant(sub["current_period_start"]), instant(sub["current_period_end"])
    advance(clock, days=12)
    assert api.charge_usage(agent.account_id, 3).status_code == 201

    reset = agent.post(f"/subscriptions/{sub['id']}/reset-cycle")
    assert reset.status_code == 200, reset.text
    data = reset.json()["data"]
    new_start = instant(data["current_period_start"])
    assert start + timedelta(days=12) <= new_start < start + timedelta(days=12, minutes=1)
    assert instant(data["current_period_end"]) == add_periods(new_start, "month", 1)

    invoice = invoices_of(services, agent.account_id)[-1]
    assert invoice.billing_reason == "subscription_reset"
    credit, period = invoice.lines
    assert credit.amount == -_unused(D(30), start, end, new_start, rounding="ROUND_DOWN")
    assert (period.amount, period.period_start) == (D(30), new_start)
    assert invoice.total == D(30) + credit.amount
    assert invoice.status == "paid"
    # The old period's credits (7 left) ended; the new period's 10 were granted.
    grants = grants_of(services, agent.account_id)
    assert [(g.status, g.expired_micros) for g in grants] == [
        ("expired", 7_000_000),
        ("active", 0),
    ]
    assert agent.balance() == D(10)


def test_dunning_retries_then_cancels(api: Api, services: Services) -> None:
    plan = create_plan(api, price=15, included_credits=5)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    end = instant(sub["current_period_end"])
    set_default_card(api, agent, CARD_ATTACH_THEN_FAIL)

    advance_to(clock, end + timedelta(minutes=10))
    current = status(agent, sub["id"])
    assert current["status"] == "past_due"
    assert current["payment_status"] == "failed"
    assert current["latest_invoice"]["status"] == "open"
    assert current["latest_invoice"]["attempt_count"] == 1
    renewal_at = end
    assert abs(instant(current["next_retry_at"]) - (renewal_at + timedelta(days=1))) < timedelta(
        minutes=1
    )
    assert agent.balance() == D(0)  # the old credits expired; no new ones unpaid

    expected_attempts = 1
    for days in (1, 3, 5):
        advance_to(clock, renewal_at + timedelta(days=days, minutes=10))
        expected_attempts += 1
        current = status(agent, sub["id"])
        assert current["latest_invoice"]["attempt_count"] == expected_attempts
    assert current["status"] == "canceled"
    assert current["latest_invoice"]["status"] == "void"
    assert current["next_retry_at"] is None
    failed = [p for p in payments_of(services, agent.account_id) if p.status != "succeeded"]
    assert len(failed) == 4
    assert events_of(services, agent.account_id) == [
        "subscription.created",
        "subscription.past_due",
        "subscription.payment_failed",
        "subscription.payment_failed",
        "subscription.payment_failed",
        "subscription.payment_failed",
        "subscription.canceled",
    ]
    advance(clock, days=40)  # nothing more happens to a canceled subscription
    assert len(payments_of(services, agent.account_id)) == 5


def test_fix_payment_after_a_card_change_rescues_a_past_due_subscription(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=15, included_credits=5)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    end = instant(sub["current_period_end"])
    set_default_card(api, agent, CARD_ATTACH_THEN_FAIL)
    advance_to(clock, end + timedelta(minutes=10))
    assert status(agent, sub["id"])["status"] == "past_due"

    declined = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
    body = assert_error(declined, 402, "payment_declined")
    assert body["details"]["decline_code"]
    assert declined.json()["data"]["status"] == "past_due"

    set_default_card(api, agent, CARD_OK)
    fixed = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
    assert fixed.status_code == 200, fixed.text
    data = fixed.json()["data"]
    assert (data["status"], data["payment_status"]) == ("active", "paid")
    assert data["latest_invoice"]["attempt_count"] == 3
    assert agent.balance() == D(5)
    assert_error(agent.post(f"/subscriptions/{sub['id']}/fix-payment"), 409, "nothing_to_fix")

    advance(clock, days=6)  # the dunning retries that were scheduled find nothing to do
    assert len(payments_of(services, agent.account_id)) == 4
    assert status(agent, sub["id"])["status"] == "active"
    next_end = instant(data["current_period_end"])
    advance_to(clock, next_end + timedelta(minutes=10))
    assert invoices_of(services, agent.account_id)[-1].status == "paid"
    assert events_of(services, agent.account_id)[-2:] == [
        "subscription.renewed",
        "subscription.renewed",
    ]


def test_headless_decline_leaves_incomplete_that_expires(api: Api, services: Services) -> None:
    plan = create_plan(api, price=12)
    clock = api.new_clock()
    agent = api.new_agent(clock=clock)
    declined = agent.post(
        "/subscriptions",
        {"plan_id": plan["id"], "payment_method_id": api.tokenize(CARD_DECLINED)},
    )
    error = assert_error(declined, 402, "payment_declined")
    data = declined.json()["data"]
    assert data["status"] == "incomplete"
    assert data["error"]["code"] == "payment_declined"
    assert data["error"]["details"]["decline_code"] == error["details"]["decline_code"]
    assert data["payment"]["status"] != "succeeded"
    assert data["latest_invoice"]["status"] == "open"

    advance(clock, hours=23, seconds=60)
    expired = status(agent, data["id"])
    assert expired["status"] == "incomplete_expired"
    assert expired["latest_invoice"]["status"] == "void"

    # A new start with a good card is not blocked by the expired one.
    ok = subscribe(agent, plan["id"], api.tokenize(CARD_OK, exp_year=FAR_EXPIRY))
    assert ok["status"] == "active"


def test_a_declined_start_can_be_retried_with_another_card_at_once(api: Api) -> None:
    plan = create_plan(api, price=12)
    agent = api.new_agent(expires_in="never")
    declined = agent.post(
        "/subscriptions",
        {"plan_id": plan["id"], "payment_method_id": api.tokenize(CARD_DECLINED)},
    )
    assert declined.status_code == 402
    ok = subscribe(agent, plan["id"], api.tokenize(CARD_OK, exp_year=FAR_EXPIRY))
    assert ok["status"] == "active"
    first = status(agent, declined.json()["data"]["id"])
    assert first["status"] == "incomplete_expired"
    listed = agent.get("/subscriptions").json()["data"]
    assert [s["status"] for s in listed["items"]] == ["active", "incomplete_expired"]


def test_one_normal_subscription_addons_and_enterprise(api: Api, services: Services) -> None:
    normal = create_plan(api, price=10)
    other = create_plan(api, price=11)
    addon = create_plan(api, price=5, kind="addon", included_credits=5)
    enterprise = create_plan(api, price=500, kind="enterprise")
    agent, pm = subscriber(api)

    assert_error(
        agent.post("/subscriptions", {"plan_id": addon["id"], "payment_method_id": pm}),
        409,
        "addon_requires_subscription",
    )
    assert_error(
        agent.post("/subscriptions", {"plan_id": enterprise["id"], "payment_method_id": pm}),
        422,
        "plan_not_available",
    )
    subscribe(agent, normal["id"], pm)
    assert_error(
        agent.post("/subscriptions", {"plan_id": other["id"], "payment_method_id": pm}),
        409,
        "subscription_exists",
    )
    subscribe(agent, addon["id"], pm)
    assert_error(
        agent.post("/subscriptions", {"plan_id": addon["id"], "payment_method_id": pm}),
        409,
        "subscription_exists",
    )
    by_operator = api.admin_post(
        f"/accounts/{agent.account_id}/subscriptions", {"plan_id": enterprise["id"]}
    )
    assert by_operator.status_code == 201, by_operator.text
    listed = agent.get("/subscriptions").json()["data"]["items"]
    assert sorted(s["kind"] for s in listed) == ["addon", "enterprise", "normal"]
    overview = agent.get("/billing/overview").json()["data"]
    assert len(overview["active_subscriptions"]) == 3
    assert agent.balance() == D(5)  # the addon's included credits
    assert_error(agent.get("/subscriptions/sub_doesnotexist/status"), 404, "subscription_not_found")
    stranger = api.new_agent()
    assert_error(stranger.get(f"/subscriptions/{listed[0]['id']}/status"), 404)
    assert_error(stranger.post(f"/subscriptions/{listed[0]['id']}/pause"), 404)


def test_cancel_at_period_end_and_immediately(api: Api, services: Services) -> None:
    plan = create_plan(api, price=30, included_credits=10)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    start, end = instant(sub["current_period_start"]), instant(sub["current_period_end"])
    scheduled = agent.post(f"/subscriptions/{sub['id']}/cancel", {"at_period_end": True})
    assert scheduled.status_code == 200, scheduled.text
    assert scheduled.json()["data"]["cancel_at_period_end"] is True
    advance_to(clock, end + timedelta(minutes=5))
    ended = status(agent, sub["id"])
    assert ended["status"] == "canceled"
    assert len(invoices_of(services, agent.account_id)) == 1  # no renewal
    assert agent.balance() == D(0)

    second = subscribe(agent, plan["id"], pm)
    start, end = instant(second["current_period_start"]), instant(second["current_period_end"])
    advance(clock, days=10)
    now_cancel = agent.post(f"/subscriptions/{second['id']}/cancel", {"at_period_end": False})
    assert now_cancel.status_code == 200, now_cancel.text
    assert now_cancel.json()["data"]["status"] == "canceled"
    ledger = ledger_of(services, agent.account_id)
    [(_, postings)] = [t for t in ledger if t[0] == "subscription_unused_time"]
    credited = postings["wallet:promotional"]
    canceled_at = instant(now_cancel.json()["data"]["ended_at"])
    assert credited == _unused(D(30), start, end, canceled_at, rounding="ROUND_DOWN")
    # Unused time is account credit, not cash: spendable, never withdrawable (no card
    # payment stands behind it); the included credits ended.
    balance = decimal_json(agent.get("/wallet/balance"))["data"]
    assert balance["breakdown"] == {
        "subscription": D(0),
        "promotional": credited,
        "purchased": D(0),
    }
    assert balance["withdrawable"] == D(0)
    assert_error(
        agent.post(f"/subscriptions/{second['id']}/cancel", {"at_period_end": False}),
        409,
        "subscription_not_active",
    )
    notes = [
        i
        for i in decimal_json(agent.get("/billing/invoices"))["data"]["items"]
        if i["object"] == "credit_note"
    ]
    [note] = notes
    assert note["total"] == -credited
    assert note["reverses_invoice_id"] == invoices_of(services, agent.account_id)[-1].id
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_charge_amount_bounds_and_effect(api: Api, services: Services) -> None:
    agent, _ = subscriber(api)
    for amount in ("4.99", "10000.01", "5.001"):
        assert_error(agent.post("/subscriptions/charge-amount", {"amount": amount}), 422)
    charged = agent.post("/subscriptions/charge-amount", {"amount": 5}, key="charge-5")
    assert charged.status_code == 201, charged.text
    again = agent.post("/subscriptions/charge-amount", {"amount": 5}, key="charge-5")
    assert again.json() == charged.json()
    assert agent.balance() == D(5)
    big = agent.post("/subscriptions/charge-amount", {"amount": 10000})
    assert big.status_code == 201, big.text
    assert agent.balance() == D(10005)
    invoices = invoices_of(services, agent.account_id)
    assert [i.total for i in invoices] == [D(5), D(10000)]


def test_charge_amount_needing_authentication_answers_a_payment_link(api: Api) -> None:
    """A card that needs 3-D Secure cannot be charged off-session: 402
    authentication_required with a link for the same amount, credited once the human pays."""
    agent = api.new_agent()
    body = {"amount": 12, "payment_method_id": agent.card(CARD_REQUIRES_AUTH)}
    response = agent.post("/subscriptions/charge-amount", body, key="charge-auth")
    details = assert_error(response, 402, "authentication_required")["details"]
    assert details["decline_code"] == "authentication_required"
    assert agent.balance() == D(0)
    link = {"payment_url": details["payment_url"], "session_id": details["session_id"]}
    api.pay_link(link)
    confirmed = agent.post("/wallet/confirm-checkout", {"session_id": details["session_id"]})
    assert confirmed.status_code == 200, confirmed.text
    assert agent.balance() == D(12)


def test_starting_twice_with_one_idempotency_key_charges_once(api: Api, services: Services) -> None:
    plan = create_plan(api, price=9)
    agent, pm = subscriber(api)
    body = {"plan_id": plan["id"], "payment_method_id": pm}
    first = agent.post("/subscriptions", body, key="s1")
    second = agent.post("/subscriptions", body, key="s1")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert len(payments_of(services, agent.account_id)) == 1


def test_test_clock_is_validated(api: Api) -> None:
    clock = api.new_clock()
    path = f"/test-clocks/{clock.id}/advance"
    for body in ({}, {"days": 0}, {"days": -1}, {"days": 4000}, {"weeks": 1}, {"days": "x"}):
        response = api.admin_post(path, body)
        assert_error(response, 422)
    agent = api.new_agent()
    response = api.session.post(api.admin_url(path), json={"days": 1}, headers=agent.headers)
    assert_error(response, 401)
    before = clock.state()
    moved = clock.advance(hours=2)
    assert (moved["id"], moved["advanced_seconds"]) == (clock.id, 7200)
    assert instant(moved["now"]) >= instant(before["now"]) + timedelta(hours=2)
    assert instant(moved["now"]).tzinfo is not None
    assert datetime.now(UTC) < instant(moved["now"])
    once = api.admin_post(path, {"hours": 1}, key="advance-once")
    again = api.admin_post(path, {"hours": 1}, key="advance-once")
    assert once.status_code == again.status_code == 200
    assert again.json() == once.json()
    ahead = instant(clock.state()["now"]) - instant(moved["now"])
    assert timedelta(hours=1) <= ahead < timedelta(hours=2)  # moved once, not twice

    # Unknown clocks, bad start times, and the removed global clock.
    assert_error(api.admin_get("/test-clocks/clock_nope"), 404, "test_clock_not_found")
    assert_error(api.admin_post("/test-clocks/clock_nope/advance", {"days": 1}), 404)
    for body in (
        {"frozen_time": "2030-01-01T00:00:00"},  # no time zone
        {"frozen_time": "2300-01-01T00:00:00Z"},  # over 100 years away
        {"name": ""},
        {"name": "x", "extra": 1},
    ):
        assert_error(api.admin_post("/test-clocks", body), 422)
    email = f"noclock-{uuid.uuid4().hex[:8]}@example.com"
    unknown = {"email": email, "password": "long enough", "test_clock_id": "clock_nope"}
    error = assert_error(api.admin_post("/accounts", unknown), 404, "test_clock_not_found")
    assert error["details"] == {"test_clock_id": "clock_nope"}
    assert_error(api.admin_get("/test-clock"), 410, "gone")
    assert_error(api.admin_post("/test-clock/advance", {"days": 1}), 410, "gone")


def test_an_advance_made_by_another_process_is_seen_at_once(api: Api, services: Services) -> None:
    from billfold.testclock import service as testclock

    clock = api.new_clock()
    agent = api.new_agent(clock=clock)
    before = clock.now()
    with services.database.transaction() as session:  # as another process's advance would
        testclock.move_forward(session, clock.id, timedelta(hours=1))
    assert agent.get("/wallet/balance").status_code == 200
    assert clock.now() >= before + timedelta(hours=1)
    # The account's next request is on the moved time (nothing is cached per process).
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 10})
    assert link.status_code == 201, link.text
    assert instant(link.json()["data"]["expires_at"]) >= before + timedelta(hours=1)
    credit = {"account_id": agent.account_id, "amount": 5, "reason": "clock"}
    credited = api.admin_post("/adjustments", credit)
    assert credited.status_code == 201, credited.text
    assert instant(credited.json()["data"]["created_at"]) >= before + timedelta(hours=1)


def test_a_renewal_without_a_card_goes_past_due(api: Api, services: Services) -> None:
    plan = create_plan(api, price=6)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    assert agent.delete(f"/billing/payment-methods/{pm}").status_code == 200
    advance_to(clock, instant(sub["current_period_end"]) + timedelta(minutes=5))
    current = status(agent, sub["id"])
    assert current["status"] == "past_due"
    assert current["latest_invoice"]["last_payment_error"]["decline_code"] == "no_payment_method"
    assert current["latest_invoice"]["attempt_count"] == 0  # nothing was sent to the processor
    assert_error(agent.post(f"/subscriptions/{sub['id']}/fix-payment"), 422)
    set_default_card(api, agent, CARD_OK)
    fixed = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["data"]["status"] == "active"
