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

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billfold.billing.models import BillingInfo
from billfold.clock import now
from billfold.db import insert_or_ignore
from billfold.errors import NotFound
from billfold.ids import new_id
from billfold.invoices.models import Invoice, InvoiceLine, NumberSeries, OperatorSettings
from billfold.money import from_micros

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


def _next_number(session: Session, series: str, prefix: str, issued_at: datetime) -> str:
    insert_or_ignore(session, NumberSeries, {"series": series, "last_number": 0}, ["series"])
    value = session.execute(
        update(NumberSeries)
        .where(NumberSeries.series == series)
        .values(last_number=NumberSeries.last_number + 1)
        .returning(NumberSeries.last_number)
    ).scalar_one()
    return f"{prefix}-{issued_at.year}-{value:06d}"


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
    return (int(Decimal(str(rate)) * 100) if rate is not None else 0), False


def tax_percent(basis_points: int) -> Decimal:
    """1900 → 19, 1250 → 12.5."""
    return from_micros(basis_points * 10_000)


def _split_inclusive(total_micros: int, rate_bp: int) -> int:
    """The tax inside a tax-inclusive total, rounded to the cent."""
    if rate_bp == 0:
        return 0
    net = total_micros * 10_000 // (10_000 + rate_bp)
    tax = total_micros - net
    return (tax + 5_000) // 10_000 * 10_000


def _buyer_snapshot(session: Session, account_id: str) -> dict[str, Any]:
    from billfold.accounts.models import Account
    from billfold.billing.service import info_view  # billing reads wallets, which invoice

    info = info_view(session.get(BillingInfo, account_id))
    account = session.get(Account, account_id)
    info["account_email"] = account.email if account else None
    return info


def _finalize(
    session: Session,
    *,
    kind: str,
    account_id: str,
    currency: str,
    total_micros: int,
    rate_bp: int,
    reverse_charge: bool,
    seller: dict[str, Any],
    buyer: dict[str, Any],
    source: str,
    line_kind: str,
    description: str,
    payment_intent_id: str,
    refund_id: str | None = None,
    reverses_invoice_id: str | None = None,
    period: tuple[datetime, datetime] | None = None,
) -> Invoice:
    """Number and issue a paid document with one line (negative amounts: a credit note)."""
    settings = get_settings(session)
    series, prefix_key, id_prefix = (
        ("credit_note", "credit_note_prefix", "cn")
        if kind == "credit_note"
        else ("invoice", "invoice_prefix", "in")
    )
    sign = -1 if total_micros < 0 else 1
    tax = sign * _split_inclusive(abs(total_micros), rate_bp)
    issued = now()
    invoice = Invoice(
        id=new_id(id_prefix),
        account_id=account_id,
        kind=kind,
        number=_next_number(session, series, settings[prefix_key], issued),
        status="paid",
        currency=currency,
        subtotal_micros=total_micros - tax,
        discount_micros=0,
        tax_micros=tax,
        total_micros=total_micros,
        amount_paid_micros=total_micros,
        tax_rate_basis_points=rate_bp,
        reverse_charge=reverse_charge,
        payment_intent_id=payment_intent_id,
        refund_id=refund_id,
        reverses_invoice_id=reverses_invoice_id,
        source=source,
        seller=seller,
        buyer=buyer,
        issued_at=issued,
        paid_at=issued,
        created_at=issued,
    )
    session.add(invoice)
    session.add(
        InvoiceLine(
            invoice_id=invoice.id,
            account_id=account_id,
            position=1,
            kind=line_kind,
            description=description,
            quantity=1,
            unit_amount_micros=total_micros - tax,
            amount_micros=total_micros - tax,
            period_start=period[0] if period else None,
            period_end=period[1] if period else None,
        )
    )
    session.flush()
    return invoice


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
    settings = get_settings(session)
    buyer = _buyer_snapshot(session, account_id)
    rate_bp, reverse = _tax_terms(settings, buyer)
    invoice = _finalize(
        session,
        kind="invoice",
        account_id=account_id,
        currency=currency,
        total_micros=amount_micros,
        rate_bp=rate_bp,
        reverse_charge=reverse,
        seller=settings["seller"],
        buyer=buyer,
        source=f"payment:{payment_intent_id}",
        line_kind=line_kind,
        description=description,
        payment_intent_id=payment_intent_id,
        period=period,
    )
    from billfold.webhooks import service as webhooks  # webhooks render with the API's JSON

    summary = summary_view(invoice)
    webhooks.emit(session, type="invoice.finalized", account_id=account_id, data=summary)
    webhooks.emit(session, type="invoice.paid", account_id=account_id, data=summary)
    return invoice


def credit_note_for_refund(
    session: Session, *, refund_id: str, payment_intent_id: str, amount_micros: int
) -> Invoice | None:
    """The credit note of a succeeded refund, reversing (part of) its payment's invoice."""
    original = session.scalars(
        select(Invoice).where(Invoice.source == f"payment:{payment_intent_id}")
    ).first()
    if original is None:
        return None
    return _finalize(
        session,
        kind="credit_note",
        account_id=original.account_id,
        currency=original.currency,
        total_micros=-amount_micros,
        rate_bp=original.tax_rate_basis_points,
        reverse_charge=original.reverse_charge,
        seller=original.seller,
        buyer=original.buyer,
        source=f"refund:{refund_id}",
        line_kind="refund",
        description=f"Refund to card, reversing invoice {original.number}",
        payment_intent_id=payment_intent_id,
        refund_id=refund_id,
        reverses_invoice_id=original.id,
    )


def get_for_account(session: Session, *, account_id: str, invoice_id: str) -> Invoice:
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or invoice.account_id != account_id:
        raise NotFound(
            "No such invoice.", code="invoice_not_found", details={"invoice_id": invoice_id}
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
