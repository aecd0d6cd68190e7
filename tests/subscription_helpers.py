"""Driving subscriptions through time in tests: test clocks, plans, and what the
database recorded (invoices with lines, ledger transactions, credit grants, events).

Every test that moves time makes a test clock of its own and puts its accounts on it,
so tests can run in any order and in parallel: moving one clock touches nobody else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from billfold.application.jobs import Worker
from billfold.application.testclock import clock_time
from billfold.clock import as_utc, on_test_clock, wall_now
from billfold.invoices.models import Invoice, InvoiceLine
from billfold.ledger.models import LedgerPosting, LedgerTransaction
from billfold.money import from_micros
from billfold.payments.models import Payment
from billfold.processors.sandbox import SandboxObject
from billfold.services import Services
from billfold.subscriptions.models import CreditGrant
from billfold.webhooks.models import WebhookEvent
from tests.helpers import CARD_OK, Agent, Api, TestClock, decimal_json

FAR_EXPIRY = 2045  # cards must outlive the years the test clock moves through


def advance(clock: TestClock, **amount: int) -> dict[str, Any]:
    """Move `clock` forward by days/hours/seconds, running its accounts' due jobs."""
    return clock.advance(**amount)


def advance_to(clock: TestClock, moment: datetime) -> None:
    """Move `clock` to `moment` (it must be ahead), running what falls due on the way."""
    clock.advance_to(moment)


def next_occurrence(month: int, day: int, hour: int = 9) -> datetime:
    """The next `month`-`day` `hour`:00 UTC, at least a day ahead of real time."""
    year = wall_now().year
    while True:
        candidate = datetime(year, month, day, hour, tzinfo=UTC)
        if candidate > wall_now() + timedelta(days=1):
            return candidate
        year += 1


@contextmanager
def on_clock(
    services: Services, clock: TestClock, ahead: timedelta = timedelta(0)
) -> Iterator[None]:
    """Run the block in this process on `clock`'s time (`ahead` of it, as if it had moved
    on without running anything), as the server runs its accounts' use cases."""
    time = clock_time(services, clock.id)
    with on_test_clock(time.test_clock_id, time.offset + ahead):
        yield


def create_plan(api: Api, **fields: Any) -> dict[str, Any]:
    body = {
        "name": f"Plan {uuid.uuid4().hex[:6]}",
        "price": 20,
        "period": "month",
        "features": ["Feature A", "Feature B"],
        "kind": "normal",
        **fields,
    }
    response = api.admin_post("/plans", body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = decimal_json(response)["data"]
    return data


def subscriber(api: Api, clock: TestClock | None = None, card: str = CARD_OK) -> tuple[Agent, str]:
    """An agent on `clock` (or real time), with `card` saved as its default."""
    agent = api.new_agent(clock=clock)
    pm = api.tokenize(card, exp_year=FAR_EXPIRY)
    added = agent.post("/billing/payment-methods", {"payment_method_id": pm})
    assert added.status_code == 201, added.text
    return agent, pm


def set_default_card(api: Api, agent: Agent, card: str) -> str:
    pm = api.tokenize(card, exp_year=FAR_EXPIRY)
    added = agent.post("/billing/payment-methods", {"payment_method_id": pm, "make_default": True})
    assert added.status_code == 201, added.text
    return pm


def subscribe(agent: Agent, plan_id: int, pm: str, **kwargs: Any) -> dict[str, Any]:
    response = agent.post("/subscriptions", {"plan_id": plan_id, "payment_method_id": pm}, **kwargs)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = decimal_json(response)["data"]
    return data


def status(agent: Agent, subscription_id: str) -> dict[str, Any]:
    response = agent.get(f"/subscriptions/{subscription_id}/status")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = decimal_json(response)["data"]
    return data


def instant(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


@dataclass(frozen=True)
class RecordedLine:
    kind: str
    description: str
    amount: Decimal
    period_start: datetime | None
    period_end: datetime | None


@dataclass(frozen=True)
class RecordedInvoice:
    id: str
    number: str
    status: str
    billing_reason: str | None
    total: Decimal
    amount_paid: Decimal
    attempt_count: int
    lines: list[RecordedLine]


def invoices_of(services: Services, account_id: str) -> list[RecordedInvoice]:
    """The account's invoices (not credit notes), oldest first, with their lines."""
    with services.database.read() as session:
        rows = session.scalars(
            select(Invoice)
            .where(Invoice.account_id == account_id, Invoice.kind == "invoice")
            .order_by(Invoice.created_at, Invoice.number)
        ).all()
        out = []
        for row in rows:
            lines = session.scalars(
                select(InvoiceLine)
                .where(InvoiceLine.invoice_id == row.id)
                .order_by(InvoiceLine.position)
            ).all()
            out.append(
                RecordedInvoice(
                    id=row.id,
                    number=row.number or "",
                    status=row.status,
                    billing_reason=row.billing_reason,
                    total=from_micros(row.total_micros),
                    amount_paid=from_micros(row.amount_paid_micros),
                    attempt_count=row.attempt_count,
                    lines=[
                        RecordedLine(
                            kind=line.kind,
                            description=line.description,
                            amount=from_micros(line.amount_micros),
                            period_start=as_utc(line.period_start) if line.period_start else None,
                            period_end=as_utc(line.period_end) if line.period_end else None,
                        )
                        for line in lines
                    ],
                )
            )
        return out


def ledger_of(services: Services, account_id: str) -> list[tuple[str, dict[str, Decimal]]]:
    """(kind, {ledger account: amount}) of every posted transaction, oldest first."""
    with services.database.read() as session:
        txns = session.scalars(
            select(LedgerTransaction)
            .where(
                LedgerTransaction.account_id == account_id,
                LedgerTransaction.status == "succeeded",
            )
            .order_by(LedgerTransaction.created_at, LedgerTransaction.id)
        ).all()
        out = []
        for txn in txns:
            postings = session.scalars(
                select(LedgerPosting).where(LedgerPosting.transaction_id == txn.id)
            ).all()
            out.append(
                (txn.kind, {p.ledger_account: from_micros(p.amount_micros) for p in postings})
            )
        return out


def _detached(services: Services, query: Any) -> list[Any]:
    """The rows of `query`, usable after their session is gone."""
    with services.database.read() as session:
        rows = session.scalars(query).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def grants_of(services: Services, account_id: str) -> list[CreditGrant]:
    return _detached(
        services,
        select(CreditGrant)
        .where(CreditGrant.account_id == account_id)
        .order_by(CreditGrant.granted_at, CreditGrant.id),
    )


def payments_of(services: Services, account_id: str) -> list[Payment]:
    return _detached(
        services,
        select(Payment)
        .where(Payment.account_id == account_id)
        .order_by(Payment.created_at, Payment.id),
    )


def events_of(services: Services, account_id: str, prefix: str = "subscription.") -> list[str]:
    """Event types written for the account (an endpoint must be listening), oldest first."""
    with services.database.read() as session:
        rows = session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.account_id == account_id)
            .order_by(WebhookEvent.created_at, WebhookEvent.id)
        ).all()
        return [row.type for row in rows if row.type.startswith(prefix)]


def listen_to_every_event(api: Api, services: Services, url: str) -> Iterator[None]:
    """For a module's fixture: an endpoint for every event while the module runs, so
    events are written and can be asserted. Then it is disabled, and the deliveries it
    was sent (on real time: no test clock's advance runs them) are worked off, finding
    it disabled: later tests' workers do not start on a backlog."""
    created = api.admin_post("/webhook-endpoints", {"url": url, "event_types": ["*"]})
    assert created.status_code == 201, created.text
    yield
    disabled = api.session.put(
        api.admin_url(f"/webhook-endpoints/{created.json()['data']['id']}"),
        json={"enabled": False},
        headers=api.admin_headers,
    )
    assert disabled.status_code == 200, disabled.text
    while Worker(services).drain():
        pass


def charges_at_processor(services: Services, invoice_id: str) -> int:
    """Charges the sandbox processor made under the invoice's attempt keys."""
    with services.database.read() as session:
        return len(
            session.scalars(
                select(SandboxObject.id).where(
                    SandboxObject.object == "payment_intent",
                    SandboxObject.idempotency_key.like(f"{invoice_id}:%"),
                )
            ).all()
        )
