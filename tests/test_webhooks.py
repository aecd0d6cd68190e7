"""Outbound webhooks: signed, delivered by jobs, retried on schedule, logged, disabled on 410."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from standardwebhooks import Webhook

from billfold.application.jobs import Worker
from billfold.clock import now
from billfold.db import Database
from billfold.errors import InvalidRequest
from billfold.jobs import service as jobs
from billfold.jobs.models import Job
from billfold.services import Services
from billfold.webhooks import service as webhooks
from billfold.webhooks.models import WebhookDelivery
from tests.conftest import Receiver
from tests.helpers import CARD_DECLINED, Api, assert_error


def _endpoint(api: Api, url: str, event_types: list[str] | None = None) -> dict:
    body: dict[str, Any] = {"url": url}
    if event_types is not None:
        body["event_types"] = event_types
    response = api.admin_post("/webhook-endpoints", body)
    assert response.status_code == 201, response.text
    data: dict = response.json()["data"]
    assert data["secret"].startswith("whsec_")
    return data


def _verified(secret: str, headers: dict[str, str], body: bytes) -> dict:
    lowered = {k.lower(): v for k, v in headers.items()}
    payload: dict = Webhook(secret).verify(body, lowered)
    return payload


def _deliveries(api: Api, endpoint_id: str) -> list[dict]:
    response = api.admin_get(f"/webhook-endpoints/{endpoint_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict] = response.json()["data"]
    return items


def _disable(api: Api, endpoint_id: str) -> None:
    api.session.put(
        api.admin_url(f"/webhook-endpoints/{endpoint_id}"),
        json={"enabled": False},
        headers=api.admin_headers,
    )


def test_money_events_arrive_signed(api: Api, services: Services, receiver: Receiver) -> None:
    path = receiver.path()
    endpoint = _endpoint(api, receiver.url + path)
    only_funded = receiver.path()
    filtered = _endpoint(api, receiver.url + only_funded, ["wallet.funded"])
    try:
        agent = api.new_agent()
        payment = agent.fund(25).json()["data"]["payment_intent_id"]
        agent.fund(10, CARD_DECLINED)
        Worker(services).drain()
        events = [_verified(endpoint["secret"], h, b) for h, b in receiver.at(path)]
        mine = events  # only this test's activity happens while the endpoint exists
        types = sorted(e["type"] for e in mine)
        assert types.count("payment.succeeded") == 1
        assert types.count("payment.failed") == 1
        assert {"wallet.funded", "invoice.finalized", "invoice.paid"} <= set(types)
        succeeded = next(e for e in mine if e["type"] == "payment.succeeded")
        assert succeeded["data"]["payment_intent_id"] == payment
        funded = next(e for e in mine if e["type"] == "wallet.funded")
        assert (funded["data"]["amount"], funded["data"]["balance"]) == (25, 25)
        headers = receiver.at(path)[0][0]
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= {
            k.lower() for k in headers
        }
        filtered_events = [
            _verified(filtered["secret"], h, b)["type"] for h, b in receiver.at(only_funded)
        ]
        assert set(filtered_events) == {"wallet.funded"}
        # A tampered body fails verification with the real secret.
        h, b = receiver.at(path)[0]
        with pytest.raises(Exception):  # noqa: B017 - standardwebhooks' own error
            _verified(endpoint["secret"], h, b.replace(b"25", b"99"))
    finally:
        _disable(api, endpoint["id"])
        _disable(api, filtered["id"])


def test_flaky_receiver_gets_three_attempts(
    api: Api, services: Services, receiver: Receiver
) -> None:
    path = receiver.path([(500, {}), (500, {})])
    endpoint = _endpoint(api, receiver.url + path, ["coupon.redeemed"])
    try:
        code = f"W{uuid.uuid4().hex[:8].upper()}"
        assert (
            api.admin_post("/coupons", {"code": code, "kind": "credit", "amount": 1}).status_code
            == 201
        )
        agent = api.new_agent()
        assert agent.post("/wallet/coupons/redeem", {"coupon_code": code}).status_code == 200
        worker = Worker(services)
        worker.drain()
        [delivery] = _deliveries(api, endpoint["id"])
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
            "pending",
            1,
            500,
        )
        worker.drain(at=now() + timedelta(seconds=6))  # the 5 s retry (±10 %)
        worker.drain(at=now() + timedelta(minutes=6))  # the 5 min retry
        [delivery] = _deliveries(api, endpoint["id"])
        assert (delivery["status"], delivery["attempts"]) == ("succeeded", 3)
        assert [a["status_code"] for a in delivery["log"]] == [500, 500, 200]
        arrivals = receiver.at(path)
        assert len(arrivals) == 3
        ids = {h.get("webhook-id") or h.get("Webhook-Id") for h, _ in arrivals}
        assert len(ids) == 1  # the same message each time
        worker.drain(at=now() + timedelta(days=2))
        assert len(receiver.at(path)) == 3  # nothing more
    finally:
        _disable(api, endpoint["id"])


def test_gone_disables_and_retry_after_is_honoured(
    api: Api, services: Services, receiver: Receiver
) -> None:
    gone_path = receiver.path([(410, {})])
    gone = _endpoint(api, receiver.url + gone_path, ["wallet.funded"])
    busy_path = receiver.path([(429, {"Retry-After": "120"})])
    busy = _endpoint(api, receiver.url + busy_path, ["wallet.funded"])
    try:
        agent = api.new_agent()
        agent.fund(10)
        Worker(services).drain()
        listed = {e["id"]: e for e in api.admin_get("/webhook-endpoints").json()["data"]}
        assert listed[gone["id"]]["enabled"] is False
        assert "410" in listed[gone["id"]]["disabled_reason"]
        assert "secret" not in listed[gone["id"]]  # never shown again
        [busy_delivery] = _deliveries(api, busy["id"])
        with services.database.read() as session:
            row = session.get(WebhookDelivery, busy_delivery["id"])
            assert row is not None
            assert row.next_attempt_at is not None
            wait = row.next_attempt_at - now()
        assert timedelta(seconds=110) < wait <= timedelta(seconds=120)
        agent.fund(10)  # a disabled endpoint gets nothing new
        Worker(services).drain(at=now() + timedelta(minutes=3))
        assert len(receiver.at(gone_path)) == 1
        assert len(receiver.at(busy_path)) >= 2
    finally:
        _disable(api, busy["id"])


def test_worker_crash_mid_delivery_redelivers(
    api: Api, services: Services, receiver: Receiver
) -> None:
    path = receiver.path()
    endpoint = _endpoint(api, receiver.url + path, ["wallet.funded"])
    try:
        agent = api.new_agent()
        agent.fund(10)
        with services.database.transaction() as session:
            claimed = jobs.claim(session, worker_id="doomed", limit=1000)
        mine = [j for j in claimed if j.kind == webhooks.JOB_KIND]
        assert mine  # the doomed worker took the delivery and died before sending
        assert receiver.at(path) == []
        with services.database.transaction() as session:
            session.execute(
                update(Job)
                .where(Job.id.in_([j.id for j in claimed]))
                .values(locked_until=Job.created_at)
            )
        Worker(services).drain()
        assert len(receiver.at(path)) == 1
        [delivery] = _deliveries(api, endpoint["id"])
        assert delivery["status"] == "succeeded"
        # Redeliver on request: the same message id again.
        again = api.admin_post(f"/webhook-deliveries/{delivery['id']}/redeliver")
        assert again.status_code == 200, again.text
        Worker(services).drain()
        first, second = receiver.at(path)
        assert first[0]["webhook-id"] == second[0]["webhook-id"]
    finally:
        _disable(api, endpoint["id"])


def test_secret_rotation(api: Api, services: Services, receiver: Receiver) -> None:
    path = receiver.path()
    endpoint = _endpoint(api, receiver.url + path, ["wallet.funded"])
    try:
        rotated = api.admin_post(f"/webhook-endpoints/{endpoint['id']}/rotate-secret").json()[
            "data"
        ]
        assert rotated["secret"] != endpoint["secret"]
        api.new_agent().fund(10)
        Worker(services).drain()
        [(headers, body)] = receiver.at(path)
        assert _verified(rotated["secret"], headers, body)["type"] == "wallet.funded"
        with pytest.raises(Exception):  # noqa: B017
            _verified(endpoint["secret"], headers, body)
    finally:
        _disable(api, endpoint["id"])


def test_endpoint_validation(api: Api, database_url: str) -> None:
    for body in (
        {"url": "ftp://example.com/hook"},
        {"url": "https://example.com/hook", "event_types": ["wallet.exploded"]},
        {"url": "https://example.com/hook", "event_types": []},
    ):
        assert_error(api.admin_post("/webhook-endpoints", body), 422)
    assert_error(api.admin_post("/webhook-endpoints/we_nope/rotate-secret"), 404)
    # Without BILLFOLD_WEBHOOK_ALLOW_PRIVATE, internal addresses are refused.
    database = Database(database_url)
    try:
        for url in (
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://10.0.0.5/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/hook",
        ):
            with database.transaction() as session, pytest.raises(InvalidRequest):
                webhooks.create_endpoint(
                    session, url=url, event_types=["*"], enabled=True, allow_private=False
                )
    finally:
        database.dispose()


def test_an_event_exists_only_if_its_cause_committed(
    api: Api, services: Services, receiver: Receiver
) -> None:
    path = receiver.path()
    endpoint = _endpoint(api, receiver.url + path)
    try:
        agent = api.new_agent()
        agent.fund(10)
        Worker(services).drain()
        before = len(_deliveries(api, endpoint["id"]))
        assert before >= 4  # payment, funding and invoice events
        # Refused in the middle of their transactions: nothing they wrote survives,
        # events included.
        overdraw = api.admin_post(
            "/adjustments", {"account_id": agent.account_id, "amount": -50, "reason": "x"}
        )
        assert_error(overdraw, 402, "insufficient_funds")
        assert agent.post("/wallet/withdraw", {"amount": 50}).status_code == 402
        Worker(services).drain()
        assert len(_deliveries(api, endpoint["id"])) == before
        assert len(receiver.at(path)) == before
    finally:
        _disable(api, endpoint["id"])


class _RollBack(Exception):
    pass


def test_one_transaction_sees_the_endpoints_it_changes(services: Services) -> None:
    """Emit reads the endpoints once per transaction; an endpoint created, disabled or
    re-enabled in that transaction counts for the events emitted after it."""

    def deliveries(session: Any, endpoint_id: str) -> int:
        return len(
            session.query(WebhookDelivery).filter(WebhookDelivery.endpoint_id == endpoint_id).all()
        )

    with pytest.raises(_RollBack), services.database.transaction() as session:  # noqa: PT012
        webhooks.emit(session, type="invoice.paid", account_id=None, data={"n": 1})
        endpoint = webhooks.create_endpoint(
            session,
            url="http://127.0.0.1:9/hook",
            event_types=["invoice.paid"],
            enabled=True,
            allow_private=True,
        )
        webhooks.emit(session, type="invoice.paid", account_id=None, data={"n": 2})
        assert deliveries(session, endpoint.id) == 1
        webhooks.emit(session, type="invoice.finalized", account_id=None, data={"n": 3})
        assert deliveries(session, endpoint.id) == 1  # not a type it listens to
        webhooks.update_endpoint(
            session, endpoint.id, url=None, event_types=None, enabled=False, allow_private=False
        )
        webhooks.emit(session, type="invoice.paid", account_id=None, data={"n": 4})
        assert deliveries(session, endpoint.id) == 1
        webhooks.update_endpoint(
            session, endpoint.id, url=None, event_types=None, enabled=True, allow_private=False
        )
        webhooks.emit(session, type="invoice.paid", account_id=None, data={"n": 5})
        assert deliveries(session, endpoint.id) == 2
        raise _RollBack  # leave nothing behind
