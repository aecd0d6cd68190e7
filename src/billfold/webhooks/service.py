"""Outbound webhooks: events written with their cause, delivered by jobs, signed per the
Standard Webhooks spec, retried on its schedule.

An event row and one delivery job per matching endpoint are added to the transaction
that caused the event, so an event exists exactly when its cause committed. Delivery
is at least once: a worker that dies mid-delivery leaves a job that runs again. The
receiver deduplicates on `webhook-id`, which is the same for every attempt.
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from billfold.clock import now, wall_now
from billfold.db import transaction_memo
from billfold.errors import ErrorCode, InvalidRequest, NotFound
from billfold.ids import new_id
from billfold.jobs import service as jobs
from billfold.jobs.models import Lane
from billfold.jobs.service import ClaimedJob
from billfold.jsonenc import dumps
from billfold.webhooks import egress
from billfold.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.webhooks")

JOB_KIND = "webhooks.deliver"
EVENT_TYPES = frozenset(
    {
        "wallet.funded",
        "wallet.low_balance",
        "wallet.auto_funding_failed",
        "wallet.auto_funding_disabled",
        "payment.succeeded",
        "payment.failed",
        "payment.disputed",
        "payment.refunded",
        "invoice.finalized",
        "invoice.paid",
        "coupon.redeemed",
        "subscription.created",
        "subscription.renewed",
        "subscription.past_due",
        "subscription.paused",
        "subscription.resumed",
        "subscription.updated",
        "subscription.canceled",
        "subscription.payment_failed",
    }
)
# Standard Webhooks' retry schedule: the delay before attempt n+1 after attempt n fails.
SCHEDULE = [
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
]
# A whole attempt, from name lookup to the response's headers; slower counts as failed.
DELIVERY_TIMEOUT_SECONDS = 10.0
MAX_RETRY_AFTER = timedelta(hours=24)


def endpoint_view(endpoint: WebhookEndpoint, *, reveal_secret: bool = False) -> dict[str, Any]:
    """An endpoint; its secret only in the answer that created or rotated it (no part of it
    anywhere else: a prefix helps no one but a guesser)."""
    view: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "created_at": endpoint.created_at,
    }
    if reveal_secret:
        view["secret"] = endpoint.secret
    return view


def create_endpoint(
    session: Session, *, url: str, event_types: list[str], enabled: bool, allow_private: bool
) -> WebhookEndpoint:
    egress.check_url(url, allow_private=allow_private)
    endpoint = WebhookEndpoint(
        id=new_id("we"),
        url=url,
        event_types=event_types,
        secret=new_webhook_secret(),
        enabled=enabled,
        created_at=now(),
    )
    session.add(endpoint)
    session.flush()
    _forget_listeners(session)
    return endpoint


def new_webhook_secret() -> str:
    """Standard Webhooks' format: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def get_endpoint(session: Session, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound("No such webhook endpoint.", code=ErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND)
    _forget_listeners(session)  # the caller may change it
    return endpoint


def list_endpoints(session: Session) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at)))


def update_endpoint(
    session: Session,
    endpoint_id: str,
    *,
    url: str | None,
    event_types: list[str] | None,
    enabled: bool | None,
    allow_private: bool,
) -> WebhookEndpoint:
    """Change what is given (None: keep it); enabling clears the disabled reason."""
    endpoint = get_endpoint(session, endpoint_id)
    if url is not None:
        egress.check_url(url, allow_private=allow_private)
        endpoint.url = url
    if event_types is not None:
        endpoint.event_types = event_types
    if enabled is not None:
        endpoint.enabled = enabled
        endpoint.disabled_reason = None if enabled else "Disabled by the operator."
    return endpoint


def rotate_secret(session: Session, endpoint_id: str) -> WebhookEndpoint:
    endpoint = get_endpoint(session, endpoint_id)
    endpoint.secret = new_webhook_secret()
    return endpoint


def delete_endpoint(session: Session, endpoint_id: str) -> WebhookEndpoint:
    """Stop delivering to it; the row and its delivery log are kept."""
    endpoint = get_endpoint(session, endpoint_id)
    endpoint.enabled = False
    endpoint.disabled_reason = "Deleted by the operator."
    endpoint.event_types = []
    return endpoint


def emit(session: Session, *, type: str, account_id: str | None, data: Any) -> None:
    """Write an event and queue its deliveries, in the caller's transaction. `data` may be
    a callable: it is rendered only when some endpoint listens."""
    assert type in EVENT_TYPES, type
    endpoints = [
        e
        for e in _listeners(session)
        if e.enabled and ("*" in e.event_types or type in e.event_types)
    ]
    if not endpoints:
        return
    if callable(data):
        data = data()
    event_id = new_id("msg")
    created = now()
    payload = dumps({"id": event_id, "type": type, "timestamp": created, "data": data})
    session.add(
        WebhookEvent(
            id=event_id, type=type, account_id=account_id, payload=payload, created_at=created
        )
    )
    session.flush()
    for endpoint in endpoints:
        delivery = WebhookDelivery(
            id=new_id("whd"),
            event_id=event_id,
            endpoint_id=endpoint.id,
            account_id=account_id,
            status="pending",
            attempts=0,
            next_attempt_at=wall_now(),
            created_at=wall_now(),
            log=[],
        )
        session.add(delivery)
        session.flush()
        _schedule(session, delivery, attempt=0, delay=timedelta(0))


_LISTENERS = "billfold.webhooks.listeners"


def _listeners(session: Session) -> list[WebhookEndpoint]:
    """The enabled endpoints, read once per transaction: a transaction that emits several
    events (a renewal emits four) reads them once. Whatever fetches an endpoint to change
    it in the same transaction (`get_endpoint`, `create_endpoint`) makes the next emit
    read them again."""
    memo = transaction_memo(session)
    endpoints: list[WebhookEndpoint] | None = memo.get(_LISTENERS)
    if endpoints is None:
        endpoints = list(
            session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True)))
        )
        transaction_memo(session)[_LISTENERS] = endpoints  # begun by the read, if not before
    return endpoints


def _forget_listeners(session: Session) -> None:
    transaction_memo(session).pop(_LISTENERS, None)


def _schedule(
    session: Session, delivery: WebhookDelivery, *, attempt: int, delay: timedelta
) -> None:
    """Queue an attempt in the webhooks lane, at most MAX_RUNNING_PER_KEY per endpoint.
    Deliveries run on real time, whatever test clock their account is on: they talk to
    other servers (an event's own timestamp is its account's time)."""
    jobs.enqueue(
        session,
        kind=JOB_KIND,
        payload={"delivery_id": delivery.id, "attempt": attempt},
        run_at=wall_now() + delay,
        max_attempts=3,
        lane=Lane.WEBHOOKS,
        concurrency_key=f"webhook_endpoint:{delivery.endpoint_id}",
    )


def _retry_delay(attempts_done: int, response: httpx.Response | None) -> timedelta | None:
    if attempts_done >= len(SCHEDULE):
        return None
    delay = SCHEDULE[attempts_done]
    if response is not None and response.status_code in (429, 503):
        retry_after = response.headers.get("retry-after", "")
        if retry_after.isdigit():
            return min(timedelta(seconds=int(retry_after)), MAX_RETRY_AFTER)
    jitter = delay.total_seconds() * random.uniform(-0.1, 0.1)  # noqa: S311 - not security
    return delay + timedelta(seconds=jitter)


def run_delivery(services: Services, job: ClaimedJob) -> None:
    """One attempt at one delivery; the next attempt is queued if this one fails."""
    delivery_id, attempt = str(job.payload["delivery_id"]), int(job.payload["attempt"])
    with services.database.read() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending" or delivery.attempts != attempt:
            return  # done already, or superseded by a redelivery
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        event = session.get(WebhookEvent, delivery.event_id)
        assert endpoint is not None
        assert event is not None
        url, secret, enabled = endpoint.url, endpoint.secret, endpoint.enabled
        event_id, body = event.id, event.payload
    response: httpx.Response | None = None
    error: str | None = None
    started = wall_now()
    # Signatures carry the machine's time: receivers check it against their own clocks.
    signed_at = wall_now()
    if not enabled:
        error = "endpoint disabled"
    else:
        try:
            egress.validate_url(url)
            signature = Webhook(secret).sign(event_id, signed_at, body)
            response = egress.post(
                url,
                content=body.encode(),
                headers={
                    "content-type": "application/json",
                    "user-agent": "Billfold-Webhooks/1",
                    "webhook-id": event_id,
                    "webhook-timestamp": str(int(signed_at.timestamp())),
                    "webhook-signature": signature,
                },
                allow_private=services.settings.webhook_allow_private,
                timeout_seconds=DELIVERY_TIMEOUT_SECONDS,
            )
        except (httpx.HTTPError, httpx.InvalidURL, InvalidRequest) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
    elapsed_ms = int((wall_now() - started).total_seconds() * 1000)
    succeeded = response is not None and 200 <= response.status_code < 300
    gone = response is not None and response.status_code == 410
    with services.database.transaction() as session:
        row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if row is None or row.status != "pending" or row.attempts != attempt:
            return
        row.attempts = attempt + 1
        row.last_status_code = response.status_code if response is not None else None
        row.last_error = error
        row.log = [
            *row.log,
            {
                "attempt": attempt + 1,
                "at": started.isoformat(),
                "status_code": row.last_status_code,
                "error": error,
                "duration_ms": elapsed_ms,
            },
        ]
        if succeeded:
            row.status, row.next_attempt_at = "succeeded", None
            return
        if gone:
            row.status, row.next_attempt_at = "failed", None
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == row.endpoint_id)
                .values(enabled=False, disabled_reason="The endpoint answered 410 Gone.")
            )
            return
        delay = None if not enabled else _retry_delay(attempt + 1, response)
        if delay is None:
            row.status, row.next_attempt_at = "failed", None
            return
        row.next_attempt_at = wall_now() + delay
        _schedule(session, row, attempt=attempt + 1, delay=delay)


def redeliver(session: Session, delivery_id: str) -> WebhookDelivery:
    """Send a delivery again now, whatever became of it (the webhook-id stays the same)."""
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise NotFound("No such webhook delivery.", code=ErrorCode.WEBHOOK_DELIVERY_NOT_FOUND)
    delivery.status = "pending"
    delivery.next_attempt_at = wall_now()
    _schedule(session, delivery, attempt=delivery.attempts, delay=timedelta(0))
    return delivery


def list_deliveries(
    session: Session, endpoint_id: str, *, limit: int
) -> list[tuple[WebhookDelivery, str]]:
    """An endpoint's deliveries with their event types, newest first."""
    get_endpoint(session, endpoint_id)
    rows = session.execute(
        select(WebhookDelivery, WebhookEvent.type)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
    ).all()
    return [(delivery, event_type) for delivery, event_type in rows]


def event_type_of(session: Session, delivery: WebhookDelivery) -> str:
    event = session.get(WebhookEvent, delivery.event_id)
    return event.type if event else ""


def delivery_view(delivery: WebhookDelivery, event_type: str) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": event_type,
        "endpoint_id": delivery.endpoint_id,
        "account_id": delivery.account_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "log": delivery.log,
        "created_at": delivery.created_at,
    }
