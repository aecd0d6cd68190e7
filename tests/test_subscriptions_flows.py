"""Subscriptions as clients reach them: the reference document's code, the hosted checkout
in real Chromium, the operator's plans, and the engine under concurrency and crashes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from billfold.application.jobs import Worker
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.processors.sandbox import SandboxObject
from billfold.services import Services
from billfold.subscriptions import attempts, engine, renewal, start
from billfold.subscriptions.models import Subscription
from billfold.subscriptions.states import BillingReason
from tests import reference as ref
from tests.helpers import CARD_OK, Api, assert_error, decimal_json
from tests.subscription_helpers import (
    FAR_EXPIRY,
    advance,
    advance_to,
    create_plan,
    instant,
    invoices_of,
    on_clock,
    payments_of,
    status,
    subscribe,
    subscriber,
)

D = Decimal


def test_plans_as_the_reference_reads_them(api: Api) -> None:
    plan = create_plan(
        api, name="Reference Pro", price="49.99", features=["Fast", "Private"], included_credits=20
    )
    archived = create_plan(api, name="Old plan", price=5)
    enterprise = create_plan(api, name="Big Co", price=900, kind="enterprise")
    assert api.admin_post(f"/plans/{archived['id']}/archive").status_code == 200
    ref.configure(api.base_url)
    agent = api.new_agent()

    plans_data = ref.list_plans(agent.token)
    listed = {p["id"]: p for p in plans_data["subscription_plans"]}
    assert isinstance(plan["id"], int)
    mine = listed[plan["id"]]
    assert mine == {
        "id": plan["id"],
        "name": "Reference Pro",
        "price": 49.99,
        "currency": "USD",
        "period": "month",
        "features": ["Fast", "Private"],
        "kind": "normal",
        "included_credits": 20,
        "trial_days": None,
        "status": "active",
    }
    # The reference's own printing code runs on it.
    printed = [
        f"{p['name']} - ${p['price']}/{p['period']} (ID: {p['id']}) {', '.join(p['features'])}"
        for p in plans_data["subscription_plans"]
    ]
    assert f"Reference Pro - $49.99/month (ID: {plan['id']}) Fast, Private" in printed
    assert archived["id"] not in listed and enterprise["id"] not in listed
    assert plans_data["pay_as_you_go"] == {
        "available": True,
        "minimum_topup_usd": 10,
        "auto_payments": {"supported": True},
    }

    renamed = api.session.patch(
        api.admin_url(f"/plans/{plan['id']}"),
        json={"name": "Reference Pro 2", "features": ["Faster"]},
        headers=api.admin_headers,
    )
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["data"]["name"], renamed.json()["data"]["features"]) == (
        "Reference Pro 2",
        ["Faster"],
    )
    assert renamed.json()["data"]["price"] == 49.99  # price is not editable
    for bad in (
        {"name": "x", "price": -1, "period": "month"},
        {"name": "x", "price": "1.001", "period": "month"},
        {"name": "x", "price": 1, "period": "week"},
        {"name": "x", "price": 1, "period": "month", "kind": "gold"},
        {"name": "", "price": 1, "period": "month"},
    ):
        assert_error(api.admin_post("/plans", bad), 422)
    assert_error(api.admin_get("/plans/999999999"), 404, "plan_not_found")
    pm = ref.create_payment_method(CARD_OK, 12, FAR_EXPIRY, "123", "pk_test_billfold_sandbox")
    refused = agent.post("/subscriptions", {"plan_id": archived["id"], "payment_method_id": pm})
    assert_error(refused, 422, "plan_not_available")


def test_reference_subscription_calls_work_as_they_read(api: Api, services: Services) -> None:
    ref.configure(api.base_url)
    basic = create_plan(api, name="Ref Basic", price=10, included_credits=4)
    pro = create_plan(api, name="Ref Pro", price=20, included_credits=9)
    agent = api.new_agent(expires_in="never")
    token = agent.token
    stripe_pk = ref.get_stripe_config(token)["publishable_key"]

    pm_id = ref.create_payment_method("4242424242424242", 12, FAR_EXPIRY, "123", stripe_pk)
    result = ref.create_subscription_headless(token, basic["id"], pm_id, idempotency_key="ref-1")
    assert result["status"] == "active"
    again = ref.create_subscription_headless(token, basic["id"], pm_id, idempotency_key="ref-1")
    assert again == result
    subscription_id = result["id"]

    subs = ref.list_subscriptions(token)
    assert [s["id"] for s in subs["items"]] == [subscription_id]
    current = ref.get_subscription_status(token, subscription_id)
    assert current["plan"]["name"] == "Ref Basic"

    updated = ref.update_subscription(token, subscription_id, pro["id"])
    assert updated["plan_id"] == pro["id"]
    assert ref.pause_subscription(token, subscription_id)["status"] == "paused"
    assert ref.resume_subscription(token, subscription_id)["status"] == "active"
    ref.reset_subscription_cycle(token, subscription_id)
    assert invoices_of(services, agent.account_id)[-1].billing_reason == "subscription_reset"
    charged = ref.charge_subscription_amount(token, 25)
    assert charged["status"] == "succeeded"
    ref.fix_payment(token, subscription_id)  # nothing to fix: a 409 the snippet ignores
    overview = ref.get_billing_overview(token)
    assert [s["id"] for s in overview["active_subscriptions"]] == [subscription_id]

    other = api.new_agent()
    checkout = ref.create_subscription(
        other.token, basic["id"], success_url="https://example.com/ok"
    )
    assert checkout["checkout_url"].endswith(f"/pay/{checkout['session_id']}")
    link = ref.create_payment_link(other.token, purpose="subscribe", plan_id=basic["id"])
    assert link["purpose"] == "subscribe"
    assert link["amount"] == 10
    assert link["payment_url"].startswith(api.base_url)
    not_yet = other.post("/subscriptions/confirm-checkout", {"session_id": link["session_id"]})
    assert_error(not_yet, 409, "checkout_not_completed")
    wrong = other.post("/wallet/confirm-checkout", {"session_id": link["session_id"]})
    assert_error(wrong, 409, "checkout_purpose_mismatch")


def test_subscription_checkout_in_chromium(
    api: Api, services: Services, browser: object, artifacts: Path, backend: str
) -> None:
    ref.configure(api.base_url)
    plan = create_plan(api, name="Browser Plan", price="19.50", included_credits=7)
    clock = api.new_clock()
    agent = api.new_agent(clock=clock)
    started = ref.create_subscription(
        agent.token, plan["id"], success_url="https://example.com/done"
    )
    assert set(started) >= {"checkout_url", "session_id", "expires_at", "instructions"}

    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    page.goto(started["checkout_url"])
    assert page.get_by_test_id("amount").inner_text() == "$19.50"
    assert "Subscribe to Browser Plan" in page.locator(".what").inner_text()
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_label("Expiry (MM/YY)").fill("12/45")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Pay $19.50").click()
    session_id = page.get_by_test_id("session-id").inner_text()
    assert session_id == started["session_id"]
    assert "Browser Plan" in page.get_by_test_id("subscribed").inner_text()
    assert page.locator("#continue-link").get_attribute("href") == "https://example.com/done"
    page.screenshot(path=str(artifacts / f"subscribe-success-{backend}.png"), full_page=True)
    # Reloading the success page charges nothing more.
    page.reload()
    page.close()

    result = ref.confirm_subscription_checkout(agent.token, session_id)
    assert result["status"] == "active"
    assert result["plan_id"] == plan["id"]
    assert ref.confirm_subscription_checkout(agent.token, session_id) == result
    assert agent.balance() == D(7)
    [invoice] = invoices_of(services, agent.account_id)
    assert (invoice.billing_reason, invoice.total, invoice.status) == (
        "subscription_create",
        D("19.50"),
        "paid",
    )
    assert len(payments_of(services, agent.account_id)) == 1
    methods = agent.get("/billing/payment-methods").json()["data"]
    assert methods["default_payment_method_id"] is not None  # kept for renewals

    advance_to(clock, instant(result["current_period_end"]) + timedelta(minutes=5))
    renewed = status(agent, result["id"])
    assert renewed["status"] == "active"
    assert invoices_of(services, agent.account_id)[-1].billing_reason == "subscription_cycle"
    assert len(payments_of(services, agent.account_id)) == 2


def _renewal_charges(services: Services, subscription_id: str) -> int:
    with services.database.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(SandboxObject)
                .where(
                    SandboxObject.object == "payment_intent",
                    SandboxObject.idempotency_key.like("in_%"),
                    SandboxObject.data["description"].as_string().contains(subscription_id),
                )
            )
            or 0
        )


def test_two_workers_renewing_at_once_charge_once(api: Api, services: Services) -> None:
    plan = create_plan(api, price=20, included_credits=3)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    end = instant(sub["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))
    # A second renewal job for the same period (as a lease takeover would produce).
    with on_clock(services, clock), services.database.transaction() as session:
        jobs.enqueue(
            session,
            kind=engine.RENEW_JOB,
            account_id=agent.account_id,
            payload={"subscription_id": sub["id"], "period_end": end.isoformat()},
            run_at=end,
        )
    barrier = threading.Barrier(4)
    due = timedelta(minutes=2)  # both renewal jobs due on the clock, but not run yet

    def worker(n: int) -> None:
        with on_clock(services, clock, ahead=due):
            barrier.wait()
            Worker(services, worker_id=f"race-{n}", test_clock_id=clock.id).drain()

    def handler() -> None:
        with on_clock(services, clock, ahead=due):
            barrier.wait()
            job = ClaimedJob(
                0,
                engine.RENEW_JOB,
                agent.account_id,
                {"subscription_id": sub["id"], "period_end": end.isoformat()},
                1,
                1,
                clock.id,
            )
            renewal.run_renewal(services, job)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    threads += [threading.Thread(target=handler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert _renewal_charges(services, sub["id"]) == 2  # the first period and one renewal
    invoices = invoices_of(services, agent.account_id)
    assert [(i.billing_reason, i.status) for i in invoices] == [
        ("subscription_create", "paid"),
        ("subscription_cycle", "paid"),
    ]
    assert invoices[1].attempt_count == 1
    assert len(payments_of(services, agent.account_id)) == 2
    assert agent.balance() == D(3)
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_a_renewal_interrupted_after_the_charge_is_recorded_once(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=20, included_credits=3)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    end = instant(sub["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))
    # On the clock 2 minutes on, the worker rolls the period and charges, then dies
    # before recording the outcome.
    with on_clock(services, clock, ahead=timedelta(minutes=2)):
        with services.database.transaction() as session:
            row = session.get(Subscription, sub["id"])
            assert row is not None
            invoice_id = renewal.roll_period(session, engine.lock(session, sub["id"]), end)
            assert invoice_id is not None
            invoice = attempts.lock_invoice(session, invoice_id)
            attempt = attempts.reserve(session, invoice, payment_method_id=pm, trigger="renewal")
        attempts.charge(services, attempt)
    assert status(agent, sub["id"])["payment_status"] == "processing"

    advance(clock, seconds=600)  # the settle job runs 5 minutes after the attempt
    current = status(agent, sub["id"])
    assert (current["status"], current["payment_status"]) == ("active", "paid")
    assert len(payments_of(services, agent.account_id)) == 2
    assert agent.balance() == D(3)
    assert _renewal_charges(services, sub["id"]) == 2


def test_trial_then_first_charge(api: Api, services: Services) -> None:
    plan = create_plan(api, price=12, trial_days=14, included_credits=2)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], pm)
    assert sub["status"] == "trialing"
    trial_end = instant(sub["trial_end"])
    assert trial_end - instant(sub["current_period_start"]) == timedelta(days=14)
    assert invoices_of(services, agent.account_id) == []
    assert payments_of(services, agent.account_id) == []

    advance_to(clock, trial_end + timedelta(minutes=5))
    current = status(agent, sub["id"])
    assert current["status"] == "active"
    [invoice] = invoices_of(services, agent.account_id)
    assert (invoice.billing_reason, invoice.total) == ("subscription_cycle", D(12))
    assert invoice.lines[0].period_start == trial_end
    assert agent.balance() == D(2)


def test_subscription_writes_refuse_bad_input(api: Api) -> None:
    agent, _ = subscriber(api)
    for body in (
        {},
        {"plan_id": 0},
        {"plan_id": "x"},
        {"plan_id": 1, "payment_method_id": "pm bad"},
        {"plan_id": 1, "success_url": "javascript:alert(1)"},
        {"plan_id": 1, "extra": True},
    ):
        assert_error(agent.post("/subscriptions", body), 422)
    assert_error(agent.post("/subscriptions", {"plan_id": 2_000_000_000}), 404, "plan_not_found")
    assert_error(agent.put("/subscriptions/sub_x", {"new_plan_id": 0}), 422)
    assert_error(agent.put("/subscriptions/sub_x", {"new_plan_id": 1}), 404)
    for action in ("pause", "resume", "reset-cycle", "fix-payment", "cancel"):
        assert_error(agent.post(f"/subscriptions/sub_x/{action}"), 404, "subscription_not_found")
    assert_error(
        agent.post("/subscriptions/confirm-checkout", {"session_id": "cs_nope"}),
        404,
        "checkout_not_found",
    )
    listed = decimal_json(agent.get("/subscriptions"))["data"]
    assert listed["items"] == []


@pytest.mark.parametrize("final", ["unpaid"])
def test_dunning_can_end_unpaid(api: Api, services: Services, final: str) -> None:
    from tests.helpers import CARD_ATTACH_THEN_FAIL
    from tests.subscription_helpers import set_default_card

    settings = services.settings
    services.settings = settings.model_copy(
        update={"dunning_retry_days": [1], "dunning_final_status": final}
    )
    try:
        plan = create_plan(api, price=8)
        clock = api.new_clock()
        agent, pm = subscriber(api, clock)
        sub = subscribe(agent, plan["id"], pm)
        end = instant(sub["current_period_end"])
        set_default_card(api, agent, CARD_ATTACH_THEN_FAIL)
        advance_to(clock, end + timedelta(days=1, minutes=10))
        current = status(agent, sub["id"])
        assert current["status"] == "unpaid"
        assert current["latest_invoice"]["status"] == "open"
        set_default_card(api, agent, CARD_OK)
        fixed = agent.post(f"/subscriptions/{sub['id']}/fix-payment")
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["data"]["status"] == "active"
    finally:
        services.settings = settings


def _start_without_recording(services: Services, agent_id: str, plan_id: int, pm: str) -> str:
    """What start() does up to the charge, as a process that dies right after it would."""
    from billfold.subscriptions.plans import SELF_SERVE_KINDS, subscribable_plan

    with services.database.transaction() as session:
        plan = subscribable_plan(session, plan_id, kinds=SELF_SERVE_KINDS, account_id=agent_id)
        sub = start.new_subscription(
            session, account_id=agent_id, plan=plan, created_by="agent", trial=False
        )
        invoice = engine.open_invoice(
            session,
            sub,
            reason=BillingReason.CREATE,
            lines=[engine.period_line(plan, sub.current_period_start, sub.current_period_end)],
            source=f"subscription:{sub.id}:create",
        )
        attempt = attempts.reserve(session, invoice, payment_method_id=pm, trigger="create")
        sub_id = sub.id
    attempts.charge(services, attempt)
    return sub_id


def test_a_start_interrupted_after_the_charge_is_completed_by_the_settle_job(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=14, included_credits=6)
    clock = api.new_clock()
    agent, pm = subscriber(api, clock)
    with on_clock(services, clock):  # as the server runs the account's use cases
        sub_id = _start_without_recording(services, agent.account_id, plan["id"], pm)
    current = status(agent, sub_id)
    assert (current["status"], current["payment_status"]) == ("incomplete", "processing")
    # While the charge is in flight the place is held: a second start is refused.
    refused = agent.post("/subscriptions", {"plan_id": plan["id"], "payment_method_id": pm})
    assert_error(refused, 409, "subscription_exists")

    advance(clock, seconds=600)
    current = status(agent, sub_id)
    assert (current["status"], current["payment_status"]) == ("active", "paid")
    assert agent.balance() == D(6)
    assert len(payments_of(services, agent.account_id)) == 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_subscribe_link_refuses_to_charge_an_account_that_subscribed_meanwhile(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=11)
    agent, pm = subscriber(api)
    link = agent.post("/subscriptions", {"plan_id": plan["id"]})
    assert link.status_code == 201, link.text
    url = link.json()["data"]["checkout_url"]
    subscribe(agent, plan["id"], pm)  # the agent subscribed headless before the human paid

    page = api.session.post(
        url,
        data={"card_number": CARD_OK, "card_expiry": "12/45", "card_cvc": "123"},
        allow_redirects=False,
    )
    assert page.status_code == 409
    assert "already has a subscription" in page.text and "Nothing was charged" in page.text
    assert len(payments_of(services, agent.account_id)) == 1
    session_id = link.json()["data"]["session_id"]
    pending = agent.post("/subscriptions/confirm-checkout", {"session_id": session_id})
    assert_error(pending, 409, "checkout_not_completed")


def _at_once(count: int, call: Callable[[int], requests.Response]) -> list[requests.Response]:
    barrier = threading.Barrier(count)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        response = call(n)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_starts_and_upgrades_charge_once(api: Api, services: Services) -> None:
    basic = create_plan(api, price=10)
    pro = create_plan(api, price=30)
    agent, pm = subscriber(api)
    body = {"plan_id": basic["id"], "payment_method_id": pm}
    starts = _at_once(6, lambda n: agent.post("/subscriptions", body, key=f"start-{n}"))
    assert sorted(r.status_code for r in starts) == [201] + [409] * 5, [r.text for r in starts]
    for refused in (r for r in starts if r.status_code == 409):
        assert refused.json()["error"]["code"] in {
            "subscription_exists",
            "subscription_payment_pending",
        }
    [started] = [r.json()["data"] for r in starts if r.status_code == 201]
    assert len(payments_of(services, agent.account_id)) == 1

    path = f"/subscriptions/{started['id']}"
    upgrades = _at_once(
        6,
        lambda n: agent.put(
            path, {"new_plan_id": pro["id"]}, headers={"Idempotency-Key": f"up-{n}"}
        ),
    )
    codes = sorted(r.status_code for r in upgrades)
    assert codes == [200] + [409] * 5, [r.text for r in upgrades]
    invoices = invoices_of(services, agent.account_id)
    assert [(i.billing_reason, i.status) for i in invoices] == [
        ("subscription_create", "paid"),
        ("subscription_update", "paid"),
    ]
    assert len(payments_of(services, agent.account_id)) == 2
    assert status(agent, started["id"])["plan_id"] == pro["id"]
    assert api.ledger_check(agent.account_id)["consistent"] is True
