"""Invoices for card charges and credit notes for refunds, numbered without gaps.

Every card charge that credits the wallet is invoiced in the same transaction that
credits it; every refund that succeeds gets a credit note referencing the invoice it
reverses. Numbers are assigned at finalization from a series row that the
finalizing transaction locks (`UPDATE … RETURNING`), so a rollback returns its number
and concurrent finalizations queue: no gaps, no duplicates.

Card amounts are tax-inclusive: the wallet is credited what the card paid, and the
invoice breaks out the tax at the buyer's country's rate (or none, with the
reverse-charge note, for an EU business buyer in another EU country than the seller).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, bindparam, insert, select, update
from sqlalchemy.orm import Session

from billfold.billing.models import BillingInfo
from billfold.clock import now
from billfold.db import insert_or_ignore
from billfold.errors import ErrorCode, NotFound
from billfold.ids import new_id
from billfold.invoices.models import Invoice, InvoiceLine, NumberSeries, OperatorSettings
from billfold.money import basis_points_to_percent, from_micros, percent_to_basis_points, tax_inside

EU_COUNTRIES = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)
REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient "
    "(Article 196, Council Directive 2006/112/EC)."
)
DEFAULT_SETTINGS: dict[str, Any] = {
    "seller": {
        "name": "Billfold operator",
        "address": [],
        "country": None,
        "tax_id": None,
        "email": None,
        "logo_path": None,
    },
    "invoice_prefix": "BF",
    "credit_note_prefix": "CN",
    "tax_rates": {},  # country → percent as a string, e.g. {"DE": "19"}
}


def get_settings(session: Session) -> dict[str, Any]:
    row = session.get(OperatorSettings, 1)
    data = row.data if row else {}
    merged = {**DEFAULT_SETTINGS, **data}
    merged["seller"] = {**DEFAULT_SETTINGS["seller"], **data.get("seller", {})}
    return merged


def update_settings(session: Session, changes: dict[str, Any]) -> dict[str, Any]:
    current = get_settings(session)
    if "seller" in changes:
        changes = {**changes, "seller": {**current["seller"], **changes["seller"]}}
    merged = {**current, **changes}
    row = session.get(OperatorSettings, 1, with_for_update=True)
    if row is None:
        session.add(OperatorSettings(id=1, data=merged, updated_at=now()))
    else:
        row.data = merged
        row.updated_at = now()
    return merged


def lock_series(session: Session, kind: str) -> None:
    """Lock the number series a document of `kind` will be numbered from, ahead of the
    wallet (the lock order everywhere: number series, then wallet), for a transaction
    that must read the locked wallet before it knows the document it will issue."""
    series = "credit_note" if kind == "credit_note" else "invoice"
    insert_or_ignore(session, NumberSeries, {"series": series, "last_number": 0}, ["series"])
    session.execute(
        select(NumberSeries.series).where(NumberSeries.series == series).with_for_update()
    )


def _next_numbers(
    session: Session, series: str, prefix: str, issued_at: datetime, count: int
) -> list[str]:
    """The next `count` numbers of the series, taken in one UPDATE (its row stays locked
    until the caller's transaction ends, so they are consecutive and a rollback returns
    them)."""
    taken = {"series_name": series, "count": count}
    last = session.execute(_TAKE_NUMBERS, taken).scalar()
    if last is None:  # the series' first document: make its row (once, whoever races)
        insert_or_ignore(session, NumberSeries, {"series": series, "last_number": 0}, ["series"])
        last = session.execute(_TAKE_NUMBERS, taken).scalar_one()
    return [f"{prefix}-{issued_at.year}-{value:06d}" for value in range(last - count + 1, last + 1)]


_TAKE_NUMBERS = (
    update(NumberSeries)
    .where(NumberSeries.series == bindparam("series_name"))
    .values(last_number=NumberSeries.last_number + bindparam("count", type_=Integer))
    .returning(NumberSeries.last_number)
)


def _tax_terms(settings: dict[str, Any], buyer: dict[str, Any]) -> tuple[int, bool]:
    """(tax rate in basis points, reverse charge) for this buyer."""
    seller_country = settings["seller"].get("country")
    buyer_country = buyer.get("address_country")
    if (
        buyer.get("tax_id_type") == "eu_vat"
        and buyer.get("tax_id")
        and seller_country in EU_COUNTRIES
        and buyer_country in EU_COUNTRIES
        and buyer_country != seller_country
    ):
        return 0, True
    rate = settings["tax_rates"].get(buyer_country or "")
    return (percent_to_basis_points(Decimal(str(rate))) if rate is not None else 0), False


def tax_percent(basis_points: int) -> Decimal:
    """1900 → 19, 1250 → 12.5."""
    return basis_points_to_percent(basis_points)


def _buyer_snapshot(session: Session, account_id: str) -> dict[str, Any]:
    return _buyer_snapshots(session, [account_id])[account_id]


def _buyer_snapshots(session: Session, account_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each account's billing details and email as an invoice records its buyer."""
    from billfold.accounts.models import Account
    from billfold.billing.service import info_view  # billing reads wallets, which invoice

    infos = {
        info.account_id: info
        for info in session.scalars(
            select(BillingInfo).where(BillingInfo.account_id.in_(account_ids))
        )
    }
    emails = dict(
        session.execute(select(Account.id, Account.email).where(Account.id.in_(account_ids))).all()
    )
    snapshots = {}
    for account_id in account_ids:
        snapshot = info_view(infos.get(account_id))
        snapshot["account_email"] = emails.get(account_id)
        snapshots[account_id] = snapshot
    return snapshots


@dataclass(frozen=True)
class Line:
    """One invoice line: a tax-inclusive amount (negative for a credit, e.g. unused time)."""

    kind: str
    description: str
    amount_micros: int
    period: tuple[datetime, datetime] | None = None


def _finalize(
    session: Session,
    *,
    kind: str,
    account_id: str,
    currency: str,
    rate_bp: int,
    reverse_charge: bool,
    seller: dict[str, Any],
    buyer: dict[str, Any],
    source: str,
    lines: list[Line],
    status: str = "paid",
    payment_intent_id: str | None = None,
    refund_id: str | None = None,
    reverses_invoice_id: str | None = None,
    subscription_id: str | None = None,
    billing_reason: str | None = None,
    meta: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> Invoice:
    """Number and issue a document (negative amounts: a credit note), paid or still open.

    Each line's tax is split out of its tax-inclusive amount, rounded to the cent; the
    document's tax and subtotal are the sums of its lines'. `settings`: the operator's,
    when the caller has read them already (for the number's prefix).
    """
    if settings is None:
        settings = get_settings(session)
    series, prefix_key, id_prefix = (
        ("credit_note", "credit_note_prefix", "cn")
        if kind == "credit_note"
        else ("invoice", "invoice_prefix", "in")
    )
    issued = now()
    values, line_values = _document(
        id=new_id(id_prefix),
        number=_next_numbers(session, series, settings[prefix_key], issued, 1)[0],
        issued=issued,
        kind=kind,
        account_id=account_id,
        currency=currency,
        rate_bp=rate_bp,
        reverse_charge=reverse_charge,
        seller=seller,
        buyer=buyer,
        source=source,
        lines=lines,
        status=status,
        payment_intent_id=payment_intent_id,
        refund_id=refund_id,
        reverses_invoice_id=reverses_invoice_id,
        subscription_id=subscription_id,
        billing_reason=billing_reason,
        meta=meta,
    )
    invoice = Invoice(**values)
    session.add(invoice)
    session.add_all(InvoiceLine(**line) for line in line_values)
    session.flush()
    return invoice


def _document(
    *,
    id: str,
    number: str,
    issued: datetime,
    kind: str,
    account_id: str,
    currency: str,
    rate_bp: int,
    reverse_charge: bool,
    seller: dict[str, Any],
    buyer: dict[str, Any],
    source: str,
    lines: list[Line],
    status: str,
    payment_intent_id: str | None = None,
    refund_id: str | None = None,
    reverses_invoice_id: str | None = None,
    subscription_id: str | None = None,
    billing_reason: str | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A numbered document's row and its lines' rows, as `_finalize` writes them."""
    taxes = [
        (-1 if line.amount_micros < 0 else 1) * tax_inside(abs(line.amount_micros), rate_bp)
        for line in lines
    ]
    total = sum(line.amount_micros for line in lines)
    tax = sum(taxes)
    paid = status == "paid"
    values = {
        "id": id,
        "account_id": account_id,
        "kind": kind,
        "number": number,
        "status": status,
        "currency": currency,
        "subtotal_micros": total - tax,
        "discount_micros": 0,
        "tax_micros": tax,
        "total_micros": total,
        "amount_paid_micros": total if paid else 0,
        "tax_rate_basis_points": rate_bp,
        "reverse_charge": reverse_charge,
        "payment_intent_id": payment_intent_id,
        "refund_id": refund_id,
        "reverses_invoice_id": reverses_invoice_id,
        "source": source,
        "seller": seller,
        "buyer": buyer,
        "issued_at": issued,
        "paid_at": issued if paid else None,
        "created_at": issued,
        "subscription_id": subscription_id,
        "billing_reason": billing_reason,
        "attempt_count": 0,
        "meta": meta,
    }
    line_values = [
        {
            "invoice_id": id,
            "account_id": account_id,
            "position": position,
            "kind": line.kind,
            "description": line.description,
            "quantity": 1,
            "unit_amount_micros": line.amount_micros - line_tax,
            "amount_micros": line.amount_micros - line_tax,
            "period_start": line.period[0] if line.period else None,
            "period_end": line.period[1] if line.period else None,
        }
        for position, (line, line_tax) in enumerate(zip(lines, taxes, strict=True), start=1)
    ]
    return values, line_values


def issue_invoice(
    session: Session,
    *,
    account_id: str,
    currency: str,
    lines: list[Line],
    source: str,
    status: str,
    payment_intent_id: str | None = None,
    subscription_id: str | None = None,
    billing_reason: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Invoice:
    """Finalize an invoice in the caller's transaction: `paid` (a charge that succeeded) or
    `open` (awaiting a payment attempt); emits invoice.finalized (and invoice.paid)."""
    settings = get_settings(session)
    buyer = _buyer_snapshot(session, account_id)
    rate_bp, reverse = _tax_terms(settings, buyer)
    invoice = _finalize(
        session,
        kind="invoice",
        account_id=account_id,
        currency=currency,
        rate_bp=rate_bp,
        reverse_charge=reverse,
        seller=settings["seller"],
        buyer=buyer,
        source=source,
        lines=lines,
        status=status,
        payment_intent_id=payment_intent_id,
        subscription_id=subscription_id,
        billing_reason=billing_reason,
        meta=meta,
        settings=settings,
    )
    from billfold.webhooks import service as webhooks  # webhooks render with the API's JSON

    summary = summary_view(invoice)
    webhooks.emit(session, type="invoice.finalized", account_id=account_id, data=summary)
    if invoice.status == "paid":
        webhooks.emit(session, type="invoice.paid", account_id=account_id, data=summary)
    return invoice


def new_invoice_id() -> str:
    return new_id("in")


@dataclass(frozen=True)
class OpenInvoice:
    """An invoice for `issue_open_invoices` to finalize open (its id from
    `new_invoice_id`)."""

    id: str
    account_id: str
    currency: str
    lines: list[Line]
    source: str
    subscription_id: str
    billing_reason: str
    meta: dict[str, Any]


def issue_open_invoices(session: Session, drafts: list[OpenInvoice]) -> dict[str, int]:
    """`issue_invoice(status="open")` for many invoices in a few statements: numbered in
    the drafts' order by one UPDATE of the series, written by multi-row INSERTs, each
    emitting invoice.finalized; the total of each (in micros), by id."""
    if not drafts:
        return {}
    from billfold.webhooks import service as webhooks  # webhooks render with the API's JSON

    settings = get_settings(session)
    buyers = _buyer_snapshots(session, {draft.account_id for draft in drafts})
    issued = now()
    numbers = _next_numbers(session, "invoice", settings["invoice_prefix"], issued, len(drafts))
    rows, line_rows = [], []
    for draft, number in zip(drafts, numbers, strict=True):
        buyer = buyers[draft.account_id]
        rate_bp, reverse = _tax_terms(settings, buyer)
        values, lines = _document(
            id=draft.id,
            number=number,
            issued=issued,
            kind="invoice",
            account_id=draft.account_id,
            currency=draft.currency,
            rate_bp=rate_bp,
            reverse_charge=reverse,
            seller=settings["seller"],
            buyer=buyer,
            source=draft.source,
            lines=draft.lines,
            status="open",
            subscription_id=draft.subscription_id,
            billing_reason=draft.billing_reason,
            meta=draft.meta,
        )
        rows.append(values)
        line_rows += lines
    session.execute(insert(Invoice), rows)
    session.execute(insert(InvoiceLine), line_rows)
    for values in rows:
        webhooks.emit(
            session,
            type="invoice.finalized",
            account_id=values["account_id"],
            data=lambda values=values: summary_view(Invoice(**values)),
        )
    return {values["id"]: int(values["total_micros"]) for values in rows}


def mark_paid(session: Session, invoice: Invoice, *, payment_intent_id: str | None) -> None:
    set_paid(invoice, payment_intent_id=payment_intent_id, at=now())
    session.flush()
    emit_paid(session, invoice)


def set_paid(invoice: Invoice, *, payment_intent_id: str | None, at: datetime) -> None:
    """The invoice paid in full `at` (written when the session flushes: `mark_paid`
    flushes it and emits its event at once)."""
    invoice.status = "paid"
    invoice.amount_paid_micros = invoice.total_micros
    invoice.paid_at = at
    invoice.payment_intent_id = payment_intent_id
    invoice.next_payment_attempt = None


def emit_paid(session: Session, invoice: Invoice) -> None:
    """The `invoice.paid` event of an invoice `set_paid`."""
    from billfold.webhooks import service as webhooks

    webhooks.emit(
        session,
        type="invoice.paid",
        account_id=invoice.account_id,
        data=lambda: summary_view(invoice),
    )


def close_unpaid(session: Session, invoice: Invoice, *, status: str) -> None:
    """An open invoice that will not be paid: `void` or `uncollectible` (never while a
    payment attempt is in flight: its outcome must find the invoice open)."""
    assert status in ("void", "uncollectible"), status
    assert invoice.attempt_key is None, invoice.attempt_key
    invoice.status = status
    invoice.next_payment_attempt = None
    session.flush()


def issue_credit_note(
    session: Session,
    *,
    original: Invoice,
    lines: list[Line],
    source: str,
    refund_id: str | None = None,
) -> Invoice:
    """A credit note (negative lines) against a paid invoice, with its tax terms."""
    return _finalize(
        session,
        kind="credit_note",
        account_id=original.account_id,
        currency=original.currency,
        rate_bp=original.tax_rate_basis_points,
        reverse_charge=original.reverse_charge,
        seller=original.seller,
        buyer=original.buyer,
        source=source,
        lines=lines,
        payment_intent_id=original.payment_intent_id,
        refund_id=refund_id,
        reverses_invoice_id=original.id,
        subscription_id=original.subscription_id,
    )


def invoice_card_payment(
    session: Session,
    *,
    account_id: str,
    payment_intent_id: str,
    amount_micros: int,
    currency: str,
    line_kind: str,
    description: str,
    period: tuple[datetime, datetime] | None = None,
) -> Invoice:
    """Issue the paid invoice of one card charge, in the caller's transaction."""
    return issue_invoice(
        session,
        account_id=account_id,
        currency=currency,
        lines=[Line(line_kind, description, amount_micros, period)],
        source=f"payment:{payment_intent_id}",
        status="paid",
        payment_intent_id=payment_intent_id,
    )


def credit_note_for_refund(
    session: Session, *, refund_id: str, payment_intent_id: str, amount_micros: int
) -> Invoice | None:
    """The credit note of a succeeded refund, reversing (part of) its payment's invoice."""
    original = session.scalars(
        select(Invoice).where(Invoice.source == f"payment:{payment_intent_id}")
    ).first()
    if original is None:
        return None
    return issue_credit_note(
        session,
        original=original,
        lines=[
            Line(
                "refund",
                f"Refund to card, reversing invoice {original.number}",
                -amount_micros,
            )
        ],
        source=f"refund:{refund_id}",
        refund_id=refund_id,
    )


def get_for_account(session: Session, *, account_id: str, invoice_id: str) -> Invoice:
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or invoice.account_id != account_id:
        raise NotFound(
            "No such invoice.", code=ErrorCode.INVOICE_NOT_FOUND, details={"invoice_id": invoice_id}
        )
    return invoice


def lines_of(session: Session, invoice_id: str) -> list[InvoiceLine]:
    return list(
        session.scalars(
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice_id)
            .order_by(InvoiceLine.position)
        )
    )


def list_for_account(
    session: Session, *, account_id: str, limit: int, offset: int
) -> tuple[list[Invoice], int]:
    from sqlalchemy import func

    where = Invoice.account_id == account_id
    items = list(
        session.scalars(
            select(Invoice)
            .where(where)
            .order_by(Invoice.created_at.desc(), Invoice.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count()).select_from(Invoice).where(where)) or 0
    return items, int(total)


def summary_view(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "object": invoice.kind,
        "number": invoice.number,
        "status": invoice.status,
        "currency": invoice.currency,
        "subtotal": from_micros(invoice.subtotal_micros),
        "discount": from_micros(invoice.discount_micros),
        "tax": from_micros(invoice.tax_micros),
        "total": from_micros(invoice.total_micros),
        "amount_paid": from_micros(invoice.amount_paid_micros),
        "payment_intent_id": invoice.payment_intent_id,
        "reverses_invoice_id": invoice.reverses_invoice_id,
        "issued_at": invoice.issued_at,
        "paid_at": invoice.paid_at,
        "subscription_id": invoice.subscription_id,
        "billing_reason": invoice.billing_reason,
        "attempt_count": invoice.attempt_count,
        "next_payment_attempt": invoice.next_payment_attempt,
    }


def detail_view(invoice: Invoice, lines: list[InvoiceLine]) -> dict[str, Any]:
    view = summary_view(invoice)
    view.update(
        {
            "tax_rate": tax_percent(invoice.tax_rate_basis_points),
            "reverse_charge": invoice.reverse_charge,
            "reverse_charge_note": REVERSE_CHARGE_NOTE if invoice.reverse_charge else None,
            "seller": invoice.seller,
            "buyer": invoice.buyer,
            "lines": [
                {
                    "description": line.description,
                    "kind": line.kind,
                    "quantity": line.quantity,
                    "unit_amount": from_micros(line.unit_amount_micros),
                    "amount": from_micros(line.amount_micros),
                    "period_start": line.period_start,
                    "period_end": line.period_end,
                }
                for line in lines
            ],
        }
    )
    return view
