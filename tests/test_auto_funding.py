"""Auto-funding: one top-up per threshold crossing, declines counted, crash-safe jobs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from sqlalchemy import func, select, update

from billfold.application.jobs import Worker
from billfold.jobs import service as jobs
from billfold.jobs.models import Job
from billfold.payments.models import Payment
from billfold.payments.service import ensure_customer
from billfold.processors.sandbox import SandboxObject
from billfold.processors.stripe import KEY_FIELD, StripeProcessor, key_hash
from billfold.services import Services
from billfold.wallet.auto_funding import JOB_KIND, run_top_up
from tests.helpers import CARD_ATTACH_THEN_FAIL, Agent, Api, assert_error, decimal_json, jobs_of

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")


def _enable(agent: Agent, amount: object = 25, threshold: object = 5) -> dict:
    response = agent.put(
        "/wallet/auto-funding", {"auto_charge_amount": amount, "charge_threshold": threshold}
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _payments(services: Services, account_id: str, purpose: str) -> list[Payment]:
    with services.database.read() as session:
        return list(
            session.scalars(
                select(Payment).where(Payment.account_id == account_id, Payment.purpose == purpose)
            )
        )


def _charges_at_processor(services: Services, customer_id: str, key: str) -> int:
    """How many charges the processor holds that were made under Billfold's `key`."""
    processor = services.processor
    if isinstance(processor, StripeProcessor):
        intents = processor.client.v1.payment_intents.list(
            params={"customer": customer_id, "limit": 100}
        )
        return sum(
            1
            for intent in intents.auto_paging_iter()
            if (intent.to_dict().get("metadata") or {}).get(KEY_FIELD) == key_hash(key)
        )
    with services.database.read() as session:
        count = session.scalar(
            select(func.count())
            .select_from(SandboxObject)
            .where(SandboxObject.idempotency_key == key)
        )
    return int(count or 0)


def test_needs_a_card_and_validates_amounts(api: Api) -> None:
    agent = api.new_agent()
    error = assert_error(
        agent.put("/wallet/auto-funding", {"auto_charge_amount": 25, "charge_threshold": 5}), 422
    )
    assert error["code"] == "payment_method_required"
    agent.fund(10)
    for body in (
        {"auto_charge_amount": "4.99", "charge_threshold": 5},
        {"auto_charge_amount": 25, "charge_threshold": "0.99"},
        {"auto_charge_amount": 25},
        {"auto_charge_amount": "25.001", "charge_threshold": 5},
    ):
        assert_error(agent.put("/wallet/auto-funding", body), 422, "invalid_request")
    # The reference's short names work too.
    state = agent.put("/wallet/auto-funding", {"amount": 30, "threshold": 2}).json()["data"]
    assert (state["enabled"], state["auto_charge_amount"], state["charge_threshold"]) == (
        True,
        30,
        2,
    )
    balance = agent.get("/wallet/balance").json()["data"]
    assert balance["auto_funding"]["enabled"] is True
    disabled = agent.delete("/wallet/auto-funding").json()["data"]
    assert disabled["enabled"] is False


def test_concurrent_charges_crossing_the_threshold_top_up_once(
    api: Api, services: Services
) -> None:
    agent = api.new_agent()
    agent.fund(10)
    _enable(agent, amount=25, threshold=5)
    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(lambda _: api.charge_usage(agent.account_id, "0.2"), range(50)))
    assert all(r.status_code == 201 for r in results), [r.text for r in results][:3]
    assert agent.balance() == 0  # 50 x 0.2, top-up not run yet
    assert jobs_of(services, agent.account_id, JOB_KIND) == 1
    Worker(services).drain()
    assert agent.balance() == 25
    top_ups = _payments(services, agent.account_id, "auto_funding")
    assert [(p.status, p.amount_micros) for p in top_ups] == [("succeeded", 25_000_000)]
    # Still above the threshold: more charges do not top up again…
    assert api.charge_usage(agent.account_id, 19).status_code == 201
    Worker(services).drain()
    assert len(_payments(services, agent.account_id, "auto_funding")) == 1
    # …crossing it again does, once.
    assert api.charge_usage(agent.account_id, "1.5").status_code == 201
    assert api.charge_usage(agent.account_id, "0.5").status_code == 201
    Worker(services).drain()
    assert len(_payments(services, agent.account_id, "auto_funding")) == 2
    assert agent.balance() == Decimal(25) - 19 - 2 + 25
    history = agent.get("/wallet/transactions", params={"type": "credit"}).json()["data"]["items"]
    assert [t["kind"] for t in history][:2] == ["auto_funding", "auto_funding"]
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_top_up_that_leaves_balance_low_does_not_loop(api: Api, services: Services) -> None:
    agent = api.new_agent()
    agent.fund(10)
    _enable(agent, amount=5, threshold=20)  # a top-up cannot reach the threshold
    assert api.charge_usage(agent.account_id, 1).status_code == 201
    Worker(services).drain()
    assert agent.balance() == 14
    for _ in range(3):
        assert api.charge_usage(agent.account_id, 1).status_code == 201
        Worker(services).drain()
    assert agent.balance() == 11
    assert len(_payments(services, agent.account_id, "auto_funding")) == 1


def test_card_failing_every_charge_disables_the_rule_after_three(
    api: Api, services: Services
) -> None:
    agent = api.new_agent()
    agent.fund(10)
    failing = agent.card(CARD_ATTACH_THEN_FAIL)
    response = agent.post("/billing/payment-methods", {"payment_method_id": failing})
    assert response.status_code == 201, response.text  # it attaches and becomes the default
    _enable(agent, amount=20, threshold=5)
    for attempt, charge in enumerate((6, 1, 1), start=1):
        assert api.charge_usage(agent.account_id, charge).status_code == 201
        Worker(services).drain()
        state = decimal_json(agent.get("/wallet/balance"))["data"]["auto_funding"]
        assert state["consecutive_failures"] == attempt
    assert state["enabled"] is False
    assert "3 declined top-ups" in state["disabled_reason"]
    failed = [
        t
        for t in agent.get("/wallet/transactions").json()["data"]["items"]
        if t["status"] == "failed"
    ]
    assert len(failed) == 3
    assert {t["kind"] for t in failed} == {"auto_funding"}
    assert all(t["metadata"]["decline_code"] == "generic_decline" for t in failed)
    # Disabled: a further crossing charges nothing.
    assert api.charge_usage(agent.account_id, 1).status_code == 201
    Worker(services).drain()
    assert len(_payments(services, agent.account_id, "auto_funding")) == 3
    assert agent.balance() == 10 - 6 - 1 - 1 - 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_job_rerun_after_a_crash_charges_once(api: Api, services: Services) -> None:
    """A worker dies after the processor charged but before it recorded anything."""
    agent = api.new_agent()
    agent.fund(10)
    _enable(agent, amount=25, threshold=5)
    assert api.charge_usage(agent.account_id, 6).status_code == 201
    crashed = Worker(services, worker_id="crashed-worker")
    with services.database.transaction() as session:
        claimed = [
            job
            for job in jobs.claim(session, worker_id=crashed.worker_id, limit=100)
            if job.account_id == agent.account_id
        ]
    assert len(claimed) == 1
    job = claimed[0]
    # The processor call the crashed worker made (same job, so same idempotency key)…
    card = agent.get("/billing/payment-methods").json()["data"]["default_payment_method_id"]
    customer_id = ensure_customer(services.database, services.processor, agent.account_id)
    services.processor.charge(
        customer_id=customer_id,
        payment_method_id=card,
        amount_cents=2500,
        currency="USD",
        idempotency_key=f"job:{job.id}",
        description="Wallet auto-funding",
    )
    # …then silence. Its lease runs out and another worker takes the job.
    with services.database.transaction() as session:
        session.execute(update(Job).where(Job.id == job.id).values(locked_until=Job.created_at))
    Worker(services).drain()
    assert agent.balance() == 4 + 25
    assert _charges_at_processor(services, customer_id, f"job:{job.id}") == 1
    with services.database.read() as session:
        status = session.scalar(select(Job.status).where(Job.id == job.id))
    assert status == "succeeded"
    assert len(_payments(services, agent.account_id, "auto_funding")) == 1
    # Running the same job yet again is harmless.
    run_top_up(services, job)
    assert agent.balance() == 29
