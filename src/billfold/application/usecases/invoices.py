"""Invoice use cases: an agent's invoices and credit notes, the signed PDF link and the PDF
it opens, and the operator's invoice settings."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_operator
from billfold.billing.schemas import Country
from billfold.clock import wall_now
from billfold.errors import ErrorCode, Forbidden, Gone, InvalidRequest
from billfold.invoices import pdf, service
from billfold.invoices.models import Invoice
from billfold.invoices.schemas import (
    InvoiceOut,
    InvoicePage,
    InvoicePdfLinkOut,
    InvoiceSettingsIn,
    InvoiceSettingsOut,
    InvoiceSummaryOut,
)
from billfold.services import Services

LINK_LIFETIME = timedelta(minutes=15)


def link_secret(app: Services) -> bytes:
    """The key that signs PDF links, derived from the admin key (links die with it)."""
    return hmac.new(app.admin_key_hash.encode(), b"invoice-pdf-links", hashlib.sha256).digest()


def list_for_account(
    app: Services, *, account_id: str, limit: int = 50, offset: int = 0
) -> InvoicePage:
    """Invoices and credit notes, newest first."""
    with app.database.read() as session:
        items, total = service.list_for_account(
            session, account_id=account_id, limit=limit, offset=offset
        )
        return InvoicePage(
            items=[InvoiceSummaryOut.model_validate(service.summary_view(i)) for i in items],
            total=total,
            limit=limit,
            offset=offset,
            has_more=offset + len(items) < total,
        )


def get(app: Services, *, account_id: str, invoice_id: str) -> InvoiceOut:
    with app.database.read() as session:
        invoice = service.get_for_account(session, account_id=account_id, invoice_id=invoice_id)
        return InvoiceOut.model_validate(
            service.detail_view(invoice, service.lines_of(session, invoice.id))
        )


def pdf_link(
    app: Services, *, account_id: str, invoice_id: str, base_url: str
) -> InvoicePdfLinkOut:
    """A signed link to the PDF, valid 15 minutes, that needs no token (a human can open it).

    The link points at the configured public URL, else at `base_url` (where the front end
    was reached)."""
    with app.database.read() as session:
        invoice = service.get_for_account(session, account_id=account_id, invoice_id=invoice_id)
    expires_at = wall_now() + LINK_LIFETIME  # signed links live on real time
    expires = int(expires_at.timestamp())
    signature = pdf.link_signature(link_secret(app), invoice.id, expires)
    base = (app.settings.public_url or base_url).rstrip("/")
    return InvoicePdfLinkOut(
        url=f"{base}/invoices/{invoice.id}/pdf?expires={expires}&signature={signature}",
        expires_at=expires_at,
        number=invoice.number,
    )


@dataclass(frozen=True)
class InvoicePdf:
    filename: str
    content: bytes


def pdf_file(app: Services, *, invoice_id: str, expires: int, signature: str) -> InvoicePdf:
    """The PDF a signed link opens: 403 for a bad signature, 410 once the link expired."""
    if not pdf.signature_valid(link_secret(app), invoice_id, expires, signature):
        raise Forbidden("This invoice link is not valid.", code=ErrorCode.INVALID_SIGNATURE)
    if expires < wall_now().timestamp():
        raise Gone("This invoice link has expired; ask for a new one.", code=ErrorCode.LINK_EXPIRED)
    with app.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None:
            raise Forbidden("This invoice link is not valid.", code=ErrorCode.INVALID_SIGNATURE)
        content = pdf.render(invoice, service.lines_of(session, invoice.id))
    return InvoicePdf(filename=f"{invoice.number}.pdf", content=content)


def settings(app: Services) -> InvoiceSettingsOut:
    with app.database.read() as session:
        return InvoiceSettingsOut.model_validate(service.get_settings(session))


def update_settings(app: Services, *, call: Call, body: InvoiceSettingsIn) -> Reply:
    """Seller details, number prefixes and tax rates by buyer country (percent)."""
    # A null prefix means "leave it": a series always has a prefix.
    changes: dict[str, Any] = body.model_dump(
        exclude_unset=True, exclude_none=True, exclude={"seller", "tax_rates"}
    )
    if body.seller is not None:
        changes["seller"] = body.seller.model_dump(exclude_unset=True)
    if body.tax_rates is not None:
        rates = {}
        for country, rate in body.tax_rates.items():
            code = country.strip().upper()
            try:
                Country.__metadata__[0].func(code)  # type: ignore[attr-defined]
            except ValueError as exc:
                raise InvalidRequest(f"tax_rates: {exc}", details={"field": "tax_rates"}) from None
            rates[code] = str(rate)
        changes["tax_rates"] = rates

    def handler(session: Session) -> Outcome:
        return 200, InvoiceSettingsOut.model_validate(service.update_settings(session, changes))

    return for_operator(app, call).atomic(handler)
