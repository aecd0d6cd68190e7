"""Invoice endpoints for agents, the signed PDF download, and the operator's settings."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from billfold.api.deps import Agent, Call, Operator, ServicesDep, respond
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import invoices
from billfold.application.usecases.invoices import link_secret as _link_secret  # noqa: F401
from billfold.invoices.schemas import (
    InvoiceOut,
    InvoicePage,
    InvoicePdfLinkOut,
    InvoiceSettingsIn,
    InvoiceSettingsOut,
)
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["invoices"], responses=ERROR_RESPONSES)
admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["invoices"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)
files_router = APIRouter(tags=["invoices"])


@router.get("/billing/invoices", response_model=Envelope[InvoicePage])
def list_invoices(
    agent: Agent,
    services: ServicesDep,
    limit: int = Query(default=50, ge=1, le=200),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> Response:
    """Invoices and credit notes, newest first."""
    return ok(
        invoices.list_for_account(services, account_id=agent.account_id, limit=limit, offset=offset)
    )


@router.get("/billing/invoices/{invoice_id}", response_model=Envelope[InvoiceOut])
def get_invoice(invoice_id: str, agent: Agent, services: ServicesDep) -> Response:
    return ok(invoices.get(services, account_id=agent.account_id, invoice_id=invoice_id))


@router.get("/billing/invoices/{invoice_id}/pdf", response_model=Envelope[InvoicePdfLinkOut])
def invoice_pdf_link(
    invoice_id: str, agent: Agent, services: ServicesDep, request: Request
) -> Response:
    """A signed link to the PDF, valid 15 minutes, that needs no token (a human can open it)."""
    return ok(
        invoices.pdf_link(
            services,
            account_id=agent.account_id,
            invoice_id=invoice_id,
            base_url=str(request.base_url),
        )
    )


@files_router.get("/invoices/{invoice_id}/pdf", include_in_schema=False)
def download_invoice_pdf(
    invoice_id: str,
    services: ServicesDep,
    expires: int = Query(default=0),
    signature: str = Query(default="", max_length=128),
) -> Response:
    document = invoices.pdf_file(
        services, invoice_id=invoice_id, expires=expires, signature=signature
    )
    return Response(
        document.content,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{document.filename}"',
            "Cache-Control": "private, no-store",
        },
    )


@admin_router.get("/invoice-settings", response_model=Envelope[InvoiceSettingsOut])
def get_invoice_settings(services: ServicesDep) -> Response:
    return ok(invoices.settings(services))


@admin_router.put("/invoice-settings", response_model=Envelope[InvoiceSettingsOut])
def update_invoice_settings(body: InvoiceSettingsIn, services: ServicesDep) -> Response:
    """Seller details, number prefixes and tax rates by buyer country (percent)."""
    # This route takes no Idempotency-Key: the same settings twice are the same settings.
    return respond(invoices.update_settings(services, call=Call(), body=body))
