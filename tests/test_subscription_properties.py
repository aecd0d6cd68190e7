"""Random subscription lives on the test clock keep the money right.

Hypothesis draws sequences of what an agent and time can do (subscribe, let days pass,
pause, resume, change plan, reset the cycle, cancel, swap in a failing or a good card,
fix the payment, spend). After every step:

- no answer is a 5xx, and every status is in Stripe's vocabulary;
- the ledger is consistent (cached balances = sums of postings, nothing negative);
- no invoice was ever charged twice (at most one succeeded processor charge per
  invoice, across all its attempt keys), and every succeeded subscription charge paid
  exactly one invoice;
- the account holds at most one live subscription to a normal plan.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import or_, select

from billfold.invoices.models import Invoice
from billfold.payments.models import Payment
from billfold.processors.sandbox import SandboxObject
from billfold.services import Services
from billfold.subscriptions.models import LIVE_STATUSES, Subscription
from billfold.subscriptions.outcomes import PAYMENT_PURPOSES
from tests.helpers import CARD_ATTACH_THEN_FAIL, CARD_OK, Agent, Api, TestClock
from tests.subscription_helpers import (
    advance,
    create_plan,
    set_default_card,
    subscriber,
)

pytestmark = pytest.mark.slow

STATUSES = {
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "paused",
    "canceled",
    "unpaid",
}

steps = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, 2)),
    st.tuples(st.just("advance"), st.integers(1, 24 * 40)),
    st.tuples(st.just("pause")),
    st.tuples(st.just("resume")),
    st.tuples(st.just("change"), st.integers(0, 2)),
    st.tuples(st.just("reset")),
    st.tuples(st.just("cancel"), st.booleans()),
    st.tuples(st.just("card"), st.booleans()),
    st.tuples(st.just("fix")),
    st.tuples(st.just("spend"), st.integers(1, 2_000)),
)


@pytest.fixture(scope="module")
def plan_ids(live_server: Any) -> list[int]:
    from tests.conftest import ADMIN_KEY

    api = Api(live_server.url, ADMIN_KEY)
    return [
        create_plan(api, name="Prop small", price=10, included_credits=4)["id"],
        create_plan(api, name="Prop big", price=25, included_credits=15)["id"],
        create_plan(api, name="Prop yearly", price=100, period="year", included_credits=50)["id"],
    ]


def live_subscription(agent: Agent) -> dict[str, Any] | None:
    items = agent.get("/subscriptions").json()["data"]["items"]
    live = [s for s in items if s["status"] in LIVE_STATUSES]
    return live[0] if live else None


def act(api: Api, agent: Agent, plans: list[int], step: tuple[Any, ...], clock: TestClock) -> int:
    """Do one step; the HTTP status of its answer (200 for time passing, on the agent's
    own clock)."""
    name = step[0]
    if name == "advance":
        advance(clock, hours=step[1])
        return 200
    if name == "card":
        set_default_card(api, agent, CARD_OK if step[1] else CARD_ATTACH_THEN_FAIL)
        return 201
    if name == "spend":
        return api.charge_usage(agent.account_id, f"{step[1] / 100:.2f}").status_code
    if name == "subscribe":
        pm = agent.get("/billing/payment-methods").json()["data"]["default_payment_method_id"]
        body = {"plan_id": plans[step[1]], "payment_method_id": pm}
        return agent.post("/subscriptions", body).status_code
    sub = live_subscription(agent)
    if sub is None:
        return 0
    path = f"/subscriptions/{sub['id']}"
    if name == "change":
        return agent.put(path, {"new_plan_id": plans[step[1]]}).status_code
    if name == "cancel":
        return agent.post(f"{path}/cancel", {"at_period_end": step[1]}).status_code
    action = {"pause": "pause", "resume": "resume", "reset": "reset-cycle", "fix": "fix-payment"}
    return agent.post(f"{path}/{action[name]}").status_code


def check_invariants(api: Api, services: Services, agent: Agent) -> None:
    assert api.ledger_check(agent.account_id)["consistent"] is True
    with services.database.read() as session:
        subs = session.scalars(
            select(Subscription).where(Subscription.account_id == agent.account_id)
        ).all()
        assert {s.status for s in subs} <= STATUSES
        live_normal = [s for s in subs if s.kind == "normal" and s.status in LIVE_STATUSES]
        assert len(live_normal) <= 1
        invoices = session.scalars(
            select(Invoice).where(
                Invoice.account_id == agent.account_id, Invoice.subscription_id.is_not(None)
            )
        ).all()
        keys = [SandboxObject.idempotency_key.like(f"{i.id}:%") for i in invoices]
        charges = (
            session.scalars(
                select(SandboxObject).where(SandboxObject.object == "payment_intent", or_(*keys))
            ).all()
            if keys
            else []
        )
        succeeded_by_invoice = Counter(
            str(c.idempotency_key).split(":")[0]
            for c in charges
            if c.data.get("status") == "succeeded"
        )
        for invoice in invoices:
            assert succeeded_by_invoice[invoice.id] <= 1, invoice.id
            if invoice.status == "paid" and invoice.total_micros > 0:
                assert succeeded_by_invoice[invoice.id] == 1, invoice.id
        paid_by = {i.payment_intent_id for i in invoices if i.status == "paid"}
        payments = session.scalars(
            select(Payment).where(
                Payment.account_id == agent.account_id,
                Payment.purpose.in_(PAYMENT_PURPOSES),
                Payment.status == "succeeded",
            )
        ).all()
        for payment in payments:
            assert payment.id in paid_by, payment.id


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.lists(steps, min_size=3, max_size=10))
def test_random_subscription_lives_keep_the_money_right(
    api: Api, services: Services, plan_ids: list[int], script: list[tuple[Any, ...]]
) -> None:
    clock = api.new_clock()  # each example's time moves on its own
    agent, _ = subscriber(api, clock)
    for step in [("subscribe", 0), *script]:
        status = act(api, agent, plan_ids, step, clock)
        assert status < 500, step
        check_invariants(api, services, agent)
