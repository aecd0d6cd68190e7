"""Invoice endpoints for agents, the signed PDF download, and the operator's settings."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from billfold.api.deps import Agent, Operator, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.billing.schemas import Country
from billfold.clock import wall_now
from billfold.errors import ErrorCode, Forbidden, Gone, InvalidRequest
from billfold.invoices import pdf, service
from billfold.invoices.models import Invoice
from billfold.money import MAX_PERCENT, PERCENT_DECIMALS, AmountRules
from billfold.schemas import ERROR_RESPONSES, Envelope, RequestModel
from billfold.text import CleanText

router = APIRouter(route_class=DecimalJSONRoute, tags=["invoices"], responses=ERROR_RESPONSES)
admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["invoices"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)
files_router = APIRouter(tags=["invoices"])

LINK_LIFETIME = timedelta(minutes=15)


def _link_secret(services: ServicesDep) -> bytes:
    return hmac.new(services.admin_key_hash.encode(), b"invoice-pdf-links", hashlib.sha256).digest()


@router.get("/billing/invoices", response_model=Envelope[dict[str, Any]])
def list_invoices(
    agent: Agent,
    services: ServicesDep,
    limit: int = Query(default=50, ge=1, le=200),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> Response:
    """Invoices and credit notes, newest first."""
    with services.database.read() as session:
        items, total = service.list_for_account(
            session, account_id=agent.account_id, limit=limit, offset=offset
        )
        return ok(
            {
                "items": [service.summary_view(i) for i in items],
                "total": total,
                "limit": limit,
                "offset": offset,
                "has_more": offset + len(items) < total,
            }
        )


@router.get("/billing/invoices/{invoice_id}", response_model=Envelope[dict[str, Any]])
def get_invoice(invoice_id: str, agent: Agent, services: ServicesDep) -> Response:
    with services.database.read() as session:
        invoice = service.get_for_account(
            session, account_id=agent.account_id, invoice_id=invoice_id
        )
        return ok(service.detail_view(invoice, service.lines_of(session, invoice.id)))


@router.get("/billing/invoices/{invoice_id}/pdf", response_model=Envelope[dict[str, Any]])
def invoice_pdf_link(
    invoice_id: str, agent: Agent, services: ServicesDep, request: Request
) -> Response:
    """A signed link to the PDF, valid 15 minutes, that needs no token (a human can open it)."""
    with services.database.read() as session:
        invoice = service.get_for_account(
            session, account_id=agent.account_id, invoice_id=invoice_id
        )
    expires_at = wall_now() + LINK_LIFETIME  # signed links live on real time
    expires = int(expires_at.timestamp())
    signature = pdf.link_signature(_link_secret(services), invoice.id, expires)
    base = (services.settings.public_url or str(request.base_url)).rstrip("/")
    return ok(
        {
            "url": f"{base}/invoices/{invoice.id}/pdf?expires={expires}&signature={signature}",
            "expires_at": expires_at,
            "number": invoice.number,
        }
    )


@files_router.get("/invoices/{invoice_id}/pdf", include_in_schema=False)
def download_invoice_pdf(
    invoice_id: str,
    services: ServicesDep,
    expires: int = Query(default=0),
    signature: str = Query(default="", max_length=128),
) -> Response:
    if not pdf.signature_valid(_link_secret(services), invoice_id, expires, signature):
        raise Forbidden("This invoice link is not valid.", code=ErrorCode.INVALID_SIGNATURE)
    if expires < wall_now().timestamp():
        raise Gone("This invoice link has expired; ask for a new one.", code=ErrorCode.LINK_EXPIRED)
    with services.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None:
            raise Forbidden("This invoice link is not valid.", code=ErrorCode.INVALID_SIGNATURE)
        body = pdf.render(invoice, service.lines_of(session, invoice.id))
    filename = f"{invoice.number}.pdf"
    return Response(
        body,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            "Cache-Control": "private, no-store",
        },
    )


TaxRate = Annotated[
    Decimal, AmountRules(decimals=PERCENT_DECIMALS, minimum=Decimal(0), maximum=MAX_PERCENT)
]


class SellerIn(RequestModel):
    name: CleanText | None = Field(default=None, max_length=200)
    address: list[Annotated[CleanText, Field(max_length=200)]] | None = Field(
        default=None, max_length=6
    )
    country: Country | None = None
    tax_id: CleanText | None = Field(default=None, max_length=64)
    email: CleanText | None = Field(default=None, max_length=320)


class InvoiceSettingsIn(RequestModel):
    seller: SellerIn | None = None
    invoice_prefix: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,10}$")
    credit_note_prefix: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,10}$")
    tax_rates: dict[str, TaxRate] | None = None


class InvoiceSettingsOut(BaseModel):
    seller: dict[str, Any]
    invoice_prefix: str
    credit_note_prefix: str
    tax_rates: dict[str, str]


@admin_router.get("/invoice-settings", response_model=Envelope[InvoiceSettingsOut])
def get_invoice_settings(services: ServicesDep) -> Response:
    with services.database.read() as session:
        return ok(service.get_settings(session))


@admin_router.put("/invoice-settings", response_model=Envelope[InvoiceSettingsOut])
def update_invoice_settings(body: InvoiceSettingsIn, services: ServicesDep) -> Response:
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
    with services.database.transaction() as session:
        return ok(service.update_settings(session, changes))
