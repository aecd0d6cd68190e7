"""Usage charges (the platform's hot path) and Idempotency-Key semantics under concurrency."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import func, select, update

from billfold.clock import now
from billfold.idempotency.models import IdempotencyKey
from billfold.payments.models import Payment
from billfold.services import Services
from tests.helpers import Api, assert_error, decimal_json

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")


def test_charge_debits_and_reports_balance(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    response = api.charge_usage(agent.account_id, "0.000125", usecase="llm_tokens")
    assert response.status_code == 201, response.text
    data = decimal_json(response)["data"]
    assert data["amount"] == Decimal("0.000125")
    assert data["balance_after"] == Decimal("9.999875")
    assert data["usecase"] == "llm_tokens"
    assert agent.balance() == Decimal("9.999875")
    txn = agent.get("/wallet/transactions", params={"type": "debit"}).json()["data"]["items"][0]
    assert (txn["type"], txn["usecase"], txn["id"]) == ("debit", "llm_tokens", data["id"])


def test_insufficient_funds_changes_nothing(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    error = assert_error(api.charge_usage(agent.account_id, "10.000001"), 402)
    assert error["code"] == "insufficient_funds"
    assert agent.balance() == 10
    assert agent.transaction_count() == 1
    assert api.charge_usage(agent.account_id, 10).status_code == 201  # exactly all of it
    assert agent.balance() == 0
    assert_error(api.charge_usage(agent.account_id, "0.000001"), 402, "insufficient_funds")


def test_same_key_replays_and_different_payload_is_refused(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    key = f"charge-{uuid.uuid4()}"
    first = api.charge_usage(agent.account_id, 1, key=key)
    replay = api.charge_usage(agent.account_id, 1, key=key)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in first.headers
    assert_error(api.charge_usage(agent.account_id, 2, key=key), 422, "idempotency_key_reused")
    assert agent.balance() == 9


def test_a_declined_outcome_is_replayed_too(api: Api) -> None:
    agent = api.new_agent()
    key = f"charge-{uuid.uuid4()}"
    first = api.charge_usage(agent.account_id, 1, key=key)
    assert_error(first, 402, "insufficient_funds")
    agent.fund(10)
    replay = api.charge_usage(agent.account_id, 1, key=key)
    assert replay.status_code == 402
    assert replay.json() == first.json()
    assert agent.balance() == 10


def test_keys_are_scoped_per_account(api: Api) -> None:
    one, two = api.new_agent(), api.new_agent()
    key = f"shared-{uuid.uuid4()}"
    assert one.fund(10, key=key).status_code == 200
    assert two.fund(10, key=key).status_code == 200  # another account's key space
    assert one.balance() == two.balance() == 10


def test_concurrent_same_key_usage_charge_has_one_effect(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    key = f"charge-{uuid.uuid4()}"
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(
            pool.map(lambda _: api.charge_usage(agent.account_id, 1, key=key), range(20))
        )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["data"]["id"] for r in created}) == 1
    assert agent.balance() == 9
    assert agent.transaction_count() == 2


def test_concurrent_same_key_funding_charges_the_card_once(api: Api, services: Services) -> None:
    agent = api.new_agent()
    pm = agent.card()
    key = f"fund-{uuid.uuid4()}"
    body = {"amount": 25, "payment_method_id": pm}
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: agent.post("/wallet/fund", body, key=key), range(20)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409}, [
        r.text for r in responses if r.status_code not in (200, 409)
    ]
    assert 200 in statuses
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "idempotency_request_in_progress")
    assert (
        len({r.json()["data"]["payment_intent_id"] for r in responses if r.status_code == 200}) == 1
    )
    assert agent.balance() == 25
    with services.database.read() as session:
        payments = session.scalar(
            select(func.count()).select_from(Payment).where(Payment.account_id == agent.account_id)
        )
    assert payments == 1
    # After the dust settles the key replays the one outcome.
    assert agent.post("/wallet/fund", body, key=key).headers["Idempotency-Replayed"] == "true"


def test_an_expired_key_is_free_again(api: Api, services: Services) -> None:
    agent = api.new_agent()
    agent.fund(10)
    key = f"charge-{uuid.uuid4()}"
    assert api.charge_usage(agent.account_id, 1, key=key).status_code == 201
    with services.database.transaction() as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.scope == "operator", IdempotencyKey.key == key)
            .values(expires_at=now() - timedelta(seconds=1))
        )
    again = api.charge_usage(agent.account_id, 2, key=key)  # another payload: fine after expiry
    assert again.status_code == 201, again.text
    assert "Idempotency-Replayed" not in again.headers
    assert agent.balance() == 7
    assert api.charge_usage(agent.account_id, 2, key=key).headers["Idempotency-Replayed"] == "true"
    assert agent.balance() == 7
