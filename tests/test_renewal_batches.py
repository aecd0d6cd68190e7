"""Renewals handed over together (`renewal.prepare_renewals`): the plain ones roll and
finalize their invoices in one transaction, then each pays its own; the rest renew one
at a time; every subscription ends up as a renewal on its own would leave it, to the
rows and events it writes. Both databases."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from sqlalchemy import event, select

from billfold.accounts.models import Account
from billfold.application import jobs as worker_module
from billfold.application.jobs import Worker
from billfold.clock import as_utc, wall_now
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice, InvoiceLine, NumberSeries
from billfold.jobs import service as jobs
from billfold.jobs.models import Job, Lane
from billfold.jobs.service import ClaimedJob
from billfold.ledger.models import LedgerPosting, LedgerTransaction, Wallet
from billfold.payments import attempts as payment_attempts
from billfold.payments import janitor
from billfold.payments.models import Payment, PaymentAttempt
from billfold.services import Services
from billfold.subscriptions import attempts, engine, renewal, renewals_paid
from billfold.subscriptions.models import CreditGrant, Subscription
from billfold.subscriptions.outcomes import pay_invoice
from billfold.webhooks.models import WebhookEvent
from tests.helpers import (
    CARD_ATTACH_THEN_FAIL,
    CARD_OK,
    Api,
    TestClock,
    age_open_attempts,
    while_charging,
)
from tests.subscription_helpers import (
    advance,
    advance_to,
    charges_at_processor,
    create_plan,
    instant,
    invoices_of,
    listen_to_every_event,
    on_clock,
    payments_of,
    set_default_card,
    status,
    subscribe,
    subscriber,
)

D = Decimal
AFTER_THE_END = timedelta(minutes=2)


class Subscribed:
    """An agent on a test clock with a subscription, and the card it subscribed with."""

    def __init__(self, api: Api, clock: TestClock | None, plan: dict[str, Any]) -> None:
        self.agent, self.card = subscriber(api, clock)
        self.subscription = subscribe(self.agent, plan["id"], self.card)
        self.id: str = self.subscription["id"]

    def status(self) -> dict[str, Any]:
        return status(self.agent, self.id)


def _subscribers(api: Api, clock: TestClock, plan: dict[str, Any], count: int) -> list[Subscribed]:
    """`count` subscribers of `plan` on `clock`, whose periods end together."""
    return [Subscribed(api, clock, plan) for _ in range(count)]


def _due_together(api: Api, price: int, count: int) -> tuple[TestClock, list[Subscribed], datetime]:
    """`count` subscribers of a new plan at `price` on a new clock, which stops a minute
    before the first of their periods ends; the end."""
    plan = create_plan(api, price=price)
    clock = api.new_clock()
    subscribed = _subscribers(api, clock, plan, count)
    end = instant(subscribed[0].subscription["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))
    return clock, subscribed, end


def _claim_renewals(services: Services, clock: TestClock) -> list[ClaimedJob]:
    with services.database.transaction() as session:
        return jobs.claim(
            session,
            worker_id="test-batch",
            limit=50,
            test_clock_id=clock.id,
            kind=engine.RENEW_JOB,
        )


def _step(step: object) -> object:
    """What a job's rest runs."""
    assert isinstance(step, partial)
    return step.func


def _pays_reserved(step: object) -> bool:
    """Whether a job's rest pays its attempt reserved in the batch (with the batch's
    other reserved attempts: `renewals_paid.Payer`)."""
    return getattr(_step(step), "__func__", None) is renewals_paid.Payer.pay


def _reserved_of(step: object) -> tuple[attempts.Attempt, str | None]:
    """The attempt a job's rest pays, and the processor customer read for it."""
    assert _pays_reserved(step) and isinstance(step, partial)
    attempt, customer_id = step.args
    return attempt, customer_id


def test_plain_renewals_roll_together_and_the_others_renew_alone(
    api: Api, services: Services
) -> None:
    plan = create_plan(api, price=20, included_credits=3)
    cheaper = create_plan(api, price=8)
    clock = api.new_clock()
    plain = _subscribers(api, clock, plan, 3)
    declined, cardless, canceling, downgrading = _subscribers(api, clock, plan, 4)
    set_default_card(api, declined.agent, CARD_ATTACH_THEN_FAIL)
    removed = cardless.agent.delete(f"/billing/payment-methods/{cardless.card}")
    assert removed.status_code == 200, removed.text
    ended = canceling.agent.post(f"/subscriptions/{canceling.id}/cancel", {"at_period_end": True})
    assert ended.status_code == 200, ended.text
    changed = downgrading.agent.put(
        f"/subscriptions/{downgrading.id}", {"new_plan_id": cheaper["id"]}
    )
    assert changed.status_code == 200, changed.text
    end = instant(plain[0].subscription["current_period_end"])
    advance_to(clock, end - timedelta(minutes=1))

    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        assert len(claimed) == 7
        rest = renewal.prepare_renewals(services, claimed)
        by_sub = {job.payload["subscription_id"]: rest[job.id] for job in claimed}
        together = [*plain, declined, cardless]
        charged = [*plain, declined]  # a default card: their first attempts are reserved
        assert all(_pays_reserved(by_sub[one.id]) for one in charged)
        with services.database.read() as session:  # read in the batch, not again per charge
            customers = dict(
                session.execute(select(Account.id, Account.processor_customer_id)).all()
            )
        for one in charged:
            _, customer_id = _reserved_of(by_sub[one.id])
            assert customer_id == customers[one.agent.account_id] is not None
        assert _step(by_sub[cardless.id]) is pay_invoice
        assert all(_step(by_sub[one.id]) is renewal.run_renewal for one in (canceling, downgrading))

        # Rolled, not paid yet: one open invoice each, numbered in one run of the series,
        # the first attempt of each with a card reserved on it, for the invoice's total.
        opened = [invoices_of(services, one.agent.account_id)[-1] for one in together]
        assert [(i.billing_reason, i.status) for i in opened] == [
            ("subscription_cycle", "open")
        ] * 5
        numbers = sorted(int(i.number.rsplit("-", 1)[1]) for i in opened)
        assert numbers == list(range(numbers[0], numbers[0] + 5))
        with services.database.read() as session:
            rows = {
                row.id: row
                for row in session.scalars(
                    select(Invoice).where(Invoice.id.in_([i.id for i in opened]))
                )
            }
            reserved = {
                a.operation: a
                for a in session.scalars(
                    select(PaymentAttempt).where(
                        PaymentAttempt.operation.in_([f"{i.id}:1" for i in opened])
                    )
                )
            }
        for one, invoice in zip(together, opened, strict=True):
            row = rows[invoice.id]
            if one is cardless:
                assert (row.attempt_count, row.attempt_key) == (0, None)
                assert f"{invoice.id}:1" not in reserved
                continue
            attempt = reserved[f"{invoice.id}:1"]
            assert (row.attempt_count, row.attempt_key) == (1, attempt.key)
            assert row.attempt_payment_method_id == attempt.payment_method_id
            assert (row.meta or {})["attempt_trigger"] == "renewal"
            assert (attempt.state, attempt.amount_micros) == ("pending", row.total_micros)
            assert attempt.charge_started_at is not None

        for job in claimed:
            rest[job.id]()
        # The old period's credits expire (their own job, due at the same moment).
        Worker(services, worker_id="test-batch-rest", test_clock_id=clock.id).drain()

    for one in plain:
        current = one.status()
        assert (current["status"], current["payment_status"]) == ("active", "paid")
        assert current["current_period_start"] == one.subscription["current_period_end"]
        assert len(payments_of(services, one.agent.account_id)) == 2
        assert one.agent.balance() == D(3)  # the new period's credits; the old ones expired
        assert api.ledger_check(one.agent.account_id)["consistent"] is True
    assert declined.status()["status"] == "past_due"
    lacking = cardless.status()
    assert lacking["status"] == "past_due"
    assert lacking["latest_invoice"]["last_payment_error"]["decline_code"] == "no_payment_method"
    assert canceling.status()["status"] == "canceled"
    moved = downgrading.status()
    assert (moved["plan_id"], moved["status"]) == (cheaper["id"], "active")
    assert invoices_of(services, downgrading.agent.account_id)[-1].total == D(8)
    numbers_everywhere = [
        i.number
        for one in [*plain, declined, cardless, canceling, downgrading]
        for i in invoices_of(services, one.agent.account_id)
    ]
    assert len(set(numbers_everywhere)) == len(numbers_everywhere)


def test_invoices_issued_together_take_the_series_next_numbers_without_a_gap(
    api: Api, services: Services
) -> None:
    _, subscribed, _ = _due_together(api, price=5, count=3)
    with services.database.transaction() as session:
        drafts = [
            invoices.OpenInvoice(
                id=invoices.new_invoice_id(),
                account_id=one.agent.account_id,
                currency="USD",
                lines=[invoices.Line("subscription", "A period", 5_000_000)],
                source=f"test:{one.id}:numbers",
                subscription_id=one.id,
                billing_reason="subscription_cycle",
                meta={},
            )
            for one in subscribed
        ]
        invoices.issue_open_invoices(session, drafts)
        issued = session.scalars(
            select(Invoice.number).where(Invoice.id.in_([d.id for d in drafts]))
        ).all()
        numbers = sorted(int(str(number).rsplit("-", 1)[1]) for number in issued)
        series = session.get(NumberSeries, "invoice")  # locked by this transaction
        assert series is not None
        assert numbers == [series.last_number - 2, series.last_number - 1, series.last_number]
        session.rollback()  # the numbers go back to the series


def _comparable(value: Any) -> Any:
    """A row's or event's values without what differs between two accounts (ids, numbers,
    times, emails)."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items() if key not in _OWN}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, datetime):
        return "<time>"
    if isinstance(value, str) and _OWN_VALUE.match(value):
        return "<id>"
    return value


# An id (a prefix and 24 base62 characters), a time, an email.
_OWN_VALUE = re.compile(r"^([a-z]+_[A-Za-z0-9]{24}|\d{4}-\d\d-\d\dT.*|.*@.*)$")
_OWN = {"id", "number", "account_id", "subscription_id", "invoice_id", "buyer", "source"}
_OWN |= {"attempt_key", "attempt_payment_method_id", "payment_method_id", "payment_id"}
_OWN |= {"operation", "key", "context", "description", "latest_invoice_id", "customer"}
_OWN |= {"reference"}


def _written_for(services: Services, account_id: str) -> dict[str, Any]:
    """What the account's renewal wrote: its cycle invoice with lines, payment attempts,
    jobs and webhook events, comparable with another account's."""

    def columns(row: Any) -> dict[str, Any]:
        return {column.key: getattr(row, column.key) for column in row.__table__.columns}

    with services.database.read() as session:
        cycle = session.scalars(
            select(Invoice).where(
                Invoice.account_id == account_id, Invoice.billing_reason == "subscription_cycle"
            )
        ).all()
        lines = session.scalars(
            select(InvoiceLine).where(InvoiceLine.invoice_id.in_([i.id for i in cycle]))
        ).all()
        attempts = session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.account_id == account_id)
            .order_by(PaymentAttempt.created_at)
        ).all()
        queued = session.scalars(
            select(Job).where(Job.account_id == account_id).order_by(Job.id)
        ).all()
        events = session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.account_id == account_id)
            .order_by(WebhookEvent.created_at, WebhookEvent.id)
        ).all()
        transactions = session.scalars(
            select(LedgerTransaction)
            .where(LedgerTransaction.account_id == account_id)
            .order_by(LedgerTransaction.created_at, LedgerTransaction.kind)
        ).all()
        postings = session.scalars(
            select(LedgerPosting).where(LedgerPosting.account_id == account_id)
        ).all()
        by_transaction: dict[str, list[Any]] = {}
        for posting in postings:
            by_transaction.setdefault(posting.transaction_id, []).append(
                [posting.ledger_account, posting.amount_micros]
            )
        grants = session.scalars(
            select(CreditGrant)
            .where(CreditGrant.account_id == account_id)
            .order_by(CreditGrant.granted_at, CreditGrant.expires_at)
        ).all()
        return _comparable(
            {
                "invoices": [columns(i) for i in cycle],
                "lines": [{**columns(line), "position": line.position} for line in lines],
                "attempts": [columns(a) for a in attempts],
                "payments": [
                    columns(p)
                    for p in session.scalars(
                        select(Payment)
                        .where(Payment.account_id == account_id)
                        .order_by(Payment.created_at)
                    )
                ],
                "ledger": [
                    [columns(t), sorted(by_transaction.get(t.id, []))] for t in transactions
                ],
                "grants": [columns(g) for g in grants],
                "wallet": columns(session.get(Wallet, account_id)),
                "subscriptions": [
                    columns(sub)
                    for sub in session.scalars(
                        select(Subscription).where(Subscription.account_id == account_id)
                    )
                ],
                "jobs": sorted(
                    [j.kind, j.status, j.test_clock_id is not None, sorted(j.payload), j.lane]
                    for j in queued
                ),
                "events": [[e.type, json.loads(e.payload)["data"]] for e in events],
            }
        )


def test_renewals_paid_in_a_batch_write_what_one_renewed_alone_writes(
    api: Api, services: Services
) -> None:
    """Rolled together, charged one after another, their payments recorded together
    (`renewals_paid`): each account ends with the same rows and events, to the ledger's
    balances after each transaction, as an account whose renewal ran alone."""
    with contextmanager(listen_to_every_event)(api, services, "http://127.0.0.1:9/hook"):
        plan = create_plan(api, price=15, included_credits=4)
        clock = api.new_clock()
        *batched, alone = _subscribers(api, clock, plan, 4)
        end = instant(alone.subscription["current_period_end"])
        advance_to(clock, end - timedelta(minutes=1))
        with on_clock(services, clock, ahead=AFTER_THE_END):
            claimed = {job.account_id: job for job in _claim_renewals(services, clock)}
            together = [claimed[one.agent.account_id] for one in batched]
            rest = renewal.prepare_renewals(services, together)
            assert all(_pays_reserved(rest[job.id]) for job in together)
            with _statements(services) as sent:
                rest[together[0].id]()  # the first charges them all, records them together
            assert len([s for s in sent if s.startswith("UPDATE payment_attempts")]) == 1
            with _statements(services) as sent:
                for job in together[1:]:
                    rest[job.id]()
            assert sent == []  # their outcomes were recorded with the first
            renewal.run_renewal(services, claimed[alone.agent.account_id])
        expected = _written_for(services, alone.agent.account_id)
        assert {"invoice.finalized", "invoice.paid", "subscription.renewed"} <= {
            kind for kind, _ in expected["events"]
        }
        assert [t["kind"] for t, _ in expected["ledger"]][-2:] == [
            "subscription_payment",
            "subscription_credit_grant",
        ]
        for one in batched:
            assert _written_for(services, one.agent.account_id) == expected


@contextmanager
def _statements(services: Services) -> Iterator[list[str]]:
    """The SQL statements the block sends."""
    sent: list[str] = []

    def sending(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(services.database.engine, "before_cursor_execute", sending)
    try:
        yield sent
    finally:
        event.remove(services.database.engine, "before_cursor_execute", sending)


def test_renewals_rolled_together_whose_payments_never_ran_are_paid_once_later(
    api: Api, services: Services
) -> None:
    clock, subscribed, _ = _due_together(api, price=15, count=3)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        renewal.prepare_renewals(services, claimed)  # the worker dies before paying
    # The clock moves on past the payment janitor's checks before the jobs run again.
    with on_clock(services, clock, ahead=AFTER_THE_END + timedelta(minutes=10)):
        again = renewal.prepare_renewals(services, claimed)
        assert all(_step(step) is renewal.run_renewal for step in again.values())
        for job in claimed:
            again[job.id]()
    for one in subscribed:
        current = one.status()
        assert (current["status"], current["payment_status"]) == ("active", "paid")
        [_, cycle] = invoices_of(services, one.agent.account_id)
        assert (cycle.billing_reason, cycle.status, cycle.attempt_count) == (
            "subscription_cycle",
            "paid",
            1,
        )
        assert len(payments_of(services, one.agent.account_id)) == 2


def test_canceling_now_between_the_roll_and_the_payment_credits_no_unused_time(
    api: Api, services: Services
) -> None:
    """The batch rolled the period and issued its invoice, with no attempt reserved (the
    account has no card now); before the job pays it, the agent cancels now. The new
    period was never paid for: nothing of it is credited, and the job then charges
    nothing."""
    clock, [one], _ = _due_together(api, price=20, count=1)
    removed = one.agent.delete(f"/billing/payment-methods/{one.card}")
    assert removed.status_code == 200, removed.text
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        rest = renewal.prepare_renewals(services, claimed)
        assert [_step(step) for step in rest.values()] == [pay_invoice]
    before = one.agent.get("/wallet/balance").json()["data"]
    canceled = one.agent.post(f"/subscriptions/{one.id}/cancel", {"at_period_end": False})
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["data"]["status"] == "canceled"
    assert one.agent.get("/wallet/balance").json()["data"] == before
    with on_clock(services, clock, ahead=AFTER_THE_END):
        for job in claimed:
            rest[job.id]()
    assert [(i.billing_reason, i.status) for i in invoices_of(services, one.agent.account_id)] == [
        ("subscription_create", "paid"),
        ("subscription_cycle", "void"),
    ]
    assert len(payments_of(services, one.agent.account_id)) == 1
    assert one.agent.get("/wallet/balance").json()["data"] == before
    assert api.ledger_check(one.agent.account_id)["consistent"] is True


def test_canceling_now_while_a_reserved_attempt_waits_for_its_charge_is_refused(
    api: Api, services: Services
) -> None:
    """The batch reserved the new invoice's attempt: until it is charged and recorded, a
    payment is in progress, so cancel-now answers 409 and changes nothing (as during
    any charge); once the renewal is paid, it cancels, crediting the unused period."""
    clock, [one], _ = _due_together(api, price=20, count=1)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        rest = renewal.prepare_renewals(services, claimed)
    before = one.agent.get("/wallet/balance").json()["data"]
    cancel = (f"/subscriptions/{one.id}/cancel", {"at_period_end": False})
    refused = one.agent.post(*cancel, key="cancel-now-1")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "subscription_payment_pending"
    assert one.status()["status"] == "active"
    assert one.agent.get("/wallet/balance").json()["data"] == before
    with on_clock(services, clock, ahead=AFTER_THE_END):
        for job in claimed:
            rest[job.id]()
    assert one.status()["payment_status"] == "paid"
    # "Try again shortly": the refusal was not kept under its key, so the same request runs.
    canceled = one.agent.post(*cancel, key="cancel-now-1")
    assert canceled.status_code == 200, canceled.text
    assert "idempotency-replayed" not in {name.lower() for name in canceled.headers}
    assert len(payments_of(services, one.agent.account_id)) == 2
    assert api.ledger_check(one.agent.account_id)["consistent"] is True


def _open_attempt(services: Services, account_id: str) -> PaymentAttempt:
    with services.database.read() as session:
        return session.scalars(
            select(PaymentAttempt).where(
                PaymentAttempt.account_id == account_id, PaymentAttempt.state == "pending"
            )
        ).one()


def _real_time_passes(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """From here on, the payment machine's charges see real time `by` later (as if a
    batch's charges ahead of them had taken that long)."""
    monkeypatch.setattr(payment_attempts, "wall_now", lambda: wall_now() + by)


def _paid_once(api: Api, services: Services, one: Subscribed, *, attempts_made: int) -> None:
    """The renewal invoice is paid, after `attempts_made` attempts, by one charge at the
    processor, and the ledger holds."""
    [_, cycle] = invoices_of(services, one.agent.account_id)
    assert (cycle.status, cycle.attempt_count) == ("paid", attempts_made)
    assert charges_at_processor(services, cycle.id) == 1
    assert len(payments_of(services, one.agent.account_id)) == 2  # the start's and this
    assert api.ledger_check(one.agent.account_id)["consistent"] is True


@pytest.mark.parametrize("late", [False, True], ids=["at-once", "late"])
def test_a_batch_charged_long_after_its_reservation_marks_its_charge_starts_again(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch, late: bool
) -> None:
    """The batch's attempts are charged together: at once after their reservation, under
    its mark; when the charge comes more than MARK_AGAIN_AFTER after it (the batch's
    other jobs ran first, say), each attempt marks when its charge starts, just before
    the processor call, so the janitor's wait counts from then."""
    clock, subscribed, _ = _due_together(api, price=12, count=2)
    waited = payment_attempts.MARK_AGAIN_AFTER + timedelta(seconds=10)
    real_charge_many = services.processor.charge_many
    seen: dict[str, datetime] = {}  # each account's attempt's mark, at its charge

    def charge_many(requests: Any) -> Any:
        with services.database.read() as session:
            for request in requests:
                attempt = session.scalars(
                    select(PaymentAttempt).where(PaymentAttempt.key == request.idempotency_key)
                ).one()
                seen[attempt.account_id] = as_utc(attempt.charge_started_at)
        return real_charge_many(requests)

    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        rest = renewal.prepare_renewals(services, claimed)
        reserved = {
            one.agent.account_id: as_utc(
                _open_attempt(services, one.agent.account_id).charge_started_at
            )
            for one in subscribed
        }
        if late:
            _real_time_passes(monkeypatch, waited)
        monkeypatch.setattr(services.processor, "charge_many", charge_many)
        for job in claimed:
            rest[job.id]()
        monkeypatch.setattr(services.processor, "charge_many", real_charge_many)
    assert set(seen) == set(reserved)
    for account_id, mark in seen.items():
        if late:
            assert mark >= reserved[account_id] + waited  # marked again, at the charge
        else:
            assert mark == reserved[account_id]  # not written again
    for one in subscribed:
        assert one.status()["payment_status"] == "paid"
        [*_, cycle] = invoices_of(services, one.agent.account_id)
        assert charges_at_processor(services, cycle.id) == 1


def test_a_batch_attempt_the_janitor_settled_before_its_turn_is_not_charged_and_is_paid_again(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's later charge comes after the janitor settled its attempt as never charged
    (its turn came more than STALE_AFTER after the reservation): no charge is made under
    that key, and the janitor's drop pays the invoice again, once."""
    clock, [one], _ = _due_together(api, price=12, count=1)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        [job] = _claim_renewals(services, clock)
        rest = renewal.prepare_renewals(services, [job])
    attempt = _open_attempt(services, one.agent.account_id)
    age_open_attempts(services, one.agent.account_id, payment_attempts.STALE_AFTER)
    with on_clock(services, clock, ahead=AFTER_THE_END + timedelta(minutes=6)):
        settled = janitor.settle(services, attempt.id)
        assert settled is not None and settled.recorded
        _real_time_passes(monkeypatch, payment_attempts.STALE_AFTER)
        with while_charging(monkeypatch, services, lambda: None) as charged:
            rest[job.id]()  # its turn, at last
        assert charged == []
    monkeypatch.undo()
    [_, cycle] = invoices_of(services, one.agent.account_id)
    assert charges_at_processor(services, cycle.id) == 0
    assert cycle.status == "open"
    advance(clock, seconds=900)  # the pay-again job the drop queued
    _paid_once(api, services, one, attempts_made=2)


def test_a_pause_refused_while_a_reserved_attempt_waits_runs_when_sent_again(
    api: Api, services: Services
) -> None:
    """Pausing (one transaction) while the batch's attempt waits for its charge answers 409
    `subscription_payment_pending`, not kept under its Idempotency-Key: sent again with
    the same key once the renewal is paid, it pauses."""
    clock, [one], _ = _due_together(api, price=20, count=1)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        rest = renewal.prepare_renewals(services, claimed)
    refused = one.agent.post(f"/subscriptions/{one.id}/pause", {}, key="pause-1")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "subscription_payment_pending"
    with on_clock(services, clock, ahead=AFTER_THE_END):
        for job in claimed:
            rest[job.id]()
    paused = one.agent.post(f"/subscriptions/{one.id}/pause", {}, key="pause-1")
    assert paused.status_code == 200, paused.text
    assert paused.json()["data"]["status"] == "paused"
    replayed = one.agent.post(f"/subscriptions/{one.id}/pause", {}, key="pause-1")
    assert replayed.status_code == 200, replayed.text  # a success is kept and replayed
    assert replayed.headers.get("Idempotency-Replayed") == "true"


def test_a_card_a_reserved_attempt_will_charge_cannot_be_removed_until_it_is_charged(
    api: Api, services: Services
) -> None:
    """The batch reserved the renewal's attempt on the default card; until it is charged,
    removing that card answers 409 and changes nothing (else the attempt would charge a
    card the account no longer has); once charged, the card can go."""
    clock, [one], _ = _due_together(api, price=20, count=1)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        rest = renewal.prepare_renewals(services, claimed)
    newer = set_default_card(api, one.agent, CARD_OK)
    removal = f"/billing/payment-methods/{one.card}"
    refused = one.agent.delete(removal, key="remove-old-card-1")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "payment_method_in_use"
    assert refused.json()["error"]["details"]["payment_method_id"] == one.card
    cards = one.agent.get("/billing/payment-methods").json()["data"]["items"]
    assert {card["id"] for card in cards} == {one.card, newer}
    with on_clock(services, clock, ahead=AFTER_THE_END):
        for job in claimed:
            rest[job.id]()
    [*_, paid] = payments_of(services, one.agent.account_id)
    assert paid.payment_method_id == one.card  # the default when the period renewed
    removed = one.agent.delete(removal, key="remove-old-card-1")  # the same request again
    assert removed.status_code == 200, removed.text
    assert one.status()["payment_status"] == "paid"


@pytest.mark.postgres
def test_a_card_removed_while_the_batch_reserves_an_attempt_on_it_waits_then_is_refused(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch has read the default card (holding it shared) and not yet committed the
    attempt it reserves on it, when the account removes that card: the removal waits for
    the batch's commit, then finds the attempt and answers 409; the card stays."""
    clock, [one], _ = _due_together(api, price=20, count=1)
    answers: list[int] = []
    removers: list[threading.Thread] = []
    real_begin_first = payment_attempts.begin_first

    def begin_first_while_removed(session: Any, new: Any) -> Any:
        def remove() -> None:
            answers.append(one.agent.delete(f"/billing/payment-methods/{one.card}").status_code)

        remover = threading.Thread(target=remove)
        remover.start()
        remover.join(timeout=1.0)
        removers.append(remover)
        return real_begin_first(session, new)

    monkeypatch.setattr(renewal.payment_attempts, "begin_first", begin_first_while_removed)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        rest = renewal.prepare_renewals(services, claimed)
    monkeypatch.undo()
    [remover] = removers
    remover.join(timeout=60)
    assert answers == [409]  # it waited for the batch (no answer before its commit)
    cards = one.agent.get("/billing/payment-methods").json()["data"]["items"]
    assert one.card in {card["id"] for card in cards}
    with on_clock(services, clock, ahead=AFTER_THE_END):
        for job in claimed:
            rest[job.id]()
    [*_, paid] = payments_of(services, one.agent.account_id)
    assert (paid.payment_method_id, paid.status) == (one.card, "succeeded")


def test_a_batch_attempt_joined_before_its_turn_is_not_failed_by_its_turn(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal runs again elsewhere (a lease taken over) and charges the batch's
    attempt; meanwhile the batch's own turn fails before its charge. It must not settle
    the attempt as never charged (the joiner's charge is on its way, and a pay-again
    would charge a second time): it leaves it to the janitor, and the joiner records it."""
    clock, [one], _ = _due_together(api, price=20, count=1)
    with on_clock(services, clock, ahead=AFTER_THE_END):
        [job] = _claim_renewals(services, clock)
        reserved, _ = _reserved_of(renewal.prepare_renewals(services, [job])[job.id])

        def batch_turn_fails_before_its_charge() -> None:
            def unreachable(*_: object, **__: object) -> str:
                raise RuntimeError("processor unreachable")

            with monkeypatch.context() as patched:
                patched.setattr(payment_attempts.payments, "ensure_customer", unreachable)
                with pytest.raises(RuntimeError):
                    attempts.pay_reserved(services, reserved)  # no customer read ahead

        with while_charging(monkeypatch, services, batch_turn_fails_before_its_charge) as charged:
            renewal.run_renewal(services, job)
        assert charged == [reserved.key]
    advance(clock, seconds=900)  # past the janitor's checks and any pay-again
    _paid_once(api, services, one, attempts_made=1)


def test_a_bad_job_among_renewals_leaves_its_neighbours_to_renew_alone(
    api: Api, services: Services
) -> None:
    clock, agents, end = _due_together(api, price=12, count=2)
    with on_clock(services, clock), services.database.transaction() as session:
        jobs.enqueue(
            session,
            kind=engine.RENEW_JOB,
            account_id=agents[0].agent.account_id,
            payload={"subscription_id": agents[0].id, "period_end": "not a time"},
            run_at=end,
        )
    with on_clock(services, clock, ahead=AFTER_THE_END):
        worker = Worker(services, worker_id="test-bad-batch", test_clock_id=clock.id)
        assert worker.run_once(limit=50) >= 3  # the batch fails; each job runs alone
    for one in agents:
        current = one.status()
        assert (current["status"], current["payment_status"]) == ("active", "paid")
        assert len(payments_of(services, one.agent.account_id)) == 2
    with services.database.read() as session:
        bad = session.scalars(
            select(Job).where(
                Job.kind == engine.RENEW_JOB,
                Job.account_id == agents[0].agent.account_id,
                Job.dedupe_key.is_(None),
            )
        ).one()
        assert (bad.status, bad.attempts) == ("queued", 1)  # to be retried; it renewed nothing
        assert bad.last_error is not None and "not a time" in bad.last_error


def test_one_renewal_claimed_twice_in_a_batch_rolls_and_charges_once(
    api: Api, services: Services
) -> None:
    clock, [one], end = _due_together(api, price=9, count=1)
    # A second job for the same renewal (as a lease taken over would leave).
    with on_clock(services, clock), services.database.transaction() as session:
        jobs.enqueue(
            session,
            kind=engine.RENEW_JOB,
            account_id=one.agent.account_id,
            payload={"subscription_id": one.id, "period_end": end.isoformat()},
            run_at=end,
        )
    with on_clock(services, clock, ahead=AFTER_THE_END):
        claimed = _claim_renewals(services, clock)
        assert len(claimed) == 2
        rest = renewal.prepare_renewals(services, claimed)
        assert sorted(_pays_reserved(rest[job.id]) for job in claimed) == [False, True]
        for job in claimed:
            rest[job.id]()
    current = one.status()
    assert (current["status"], current["payment_status"]) == ("active", "paid")
    cycles = [
        (i.status, i.attempt_count)
        for i in invoices_of(services, one.agent.account_id)
        if i.billing_reason == "subscription_cycle"
    ]
    assert cycles == [("paid", 1)]
    assert len(payments_of(services, one.agent.account_id)) == 2


def _renewals_due_early(api: Api, services: Services, count: int) -> list[Subscribed]:
    """`count` subscribers on real time, each with a renewal job due now for a period that
    has not ended yet: each such job renews nothing."""
    plan = create_plan(api, price=7)
    subscribed = [Subscribed(api, None, plan) for _ in range(count)]
    with services.database.transaction() as session:
        for one in subscribed:
            jobs.enqueue(
                session,
                kind=engine.RENEW_JOB,
                account_id=one.agent.account_id,
                payload={
                    "subscription_id": one.id,
                    "period_end": one.subscription["current_period_end"],
                },
                run_at=wall_now() - timedelta(seconds=1),
            )
    return subscribed


def _renewal_jobs_of(
    services: Services, subscribed: list[Subscribed], *, locked_by: str
) -> list[str]:
    """The statuses of the subscribers' renewal jobs that worker `locked_by` ran."""
    with services.database.read() as session:
        return list(
            session.scalars(
                select(Job.status).where(
                    Job.kind == engine.RENEW_JOB,
                    Job.account_id.in_([one.agent.account_id for one in subscribed]),
                    Job.locked_by == locked_by,
                )
            )
        )


def test_a_serving_worker_takes_due_renewals_together_for_one_thread(
    api: Api, services: Services
) -> None:
    subscribed = _renewals_due_early(api, services, 3)
    worker = Worker(services, worker_id="test-serving-batch")
    first = worker._claim(limit=1, kind=engine.RENEW_JOB)
    assert len(first) == 1
    with ThreadPoolExecutor(1) as pool:
        tasks = worker._submit(pool, first, Lane.DEFAULT)  # claims the other two as well
        assert len(tasks) == 1
        wait(tasks)
    done = _renewal_jobs_of(services, subscribed, locked_by="test-serving-batch")
    assert done == ["succeeded"] * 3  # all three, by this worker
    for one in subscribed:
        assert one.status()["current_period_end"] == one.subscription["current_period_end"]


def test_running_once_as_served_claims_one_and_tops_its_batch_kind_up_in_this_thread(
    api: Api, services: Services
) -> None:
    subscribed = _renewals_due_early(api, services, 3)
    worker = Worker(services, worker_id="test-as-served")
    assert worker.run_once_as_served() is True
    done = _renewal_jobs_of(services, subscribed, locked_by="test-as-served")
    assert done == ["succeeded"] * 3  # one claim, then the other two of its kind with it
    assert worker.run_once_as_served() is False  # nothing due is left


def test_a_batch_past_its_time_budget_hands_its_jobs_not_started_back(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _renewals_due_early(api, services, 2)
    worker = Worker(services, worker_id="test-batch-budget")
    group = worker._claim(limit=2, kind=engine.RENEW_JOB)
    assert len(group) == 2
    monkeypatch.setattr(worker_module, "BATCH_BUDGET", -1.0)  # spent before the first
    worker._run_batch(engine.RENEW_JOB, group)
    with services.database.read() as session:
        back = session.execute(
            select(Job.status, Job.attempts, Job.locked_by).where(
                Job.id.in_([job.id for job in group])
            )
        ).all()
    assert [tuple(row) for row in back] == [("queued", 0, None)] * 2  # for any worker, at once
