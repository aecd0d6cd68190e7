"""Agent endpoints for billing info and the billing overview."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from billfold.api.deps import Agent, Call, ServicesDep, respond
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import billing
from billfold.application.usecases.billing import BillingOverviewOut
from billfold.billing.schemas import BillingInfoOut, BillingInfoUpdate
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["billing"], responses=ERROR_RESPONSES)


@router.get("/billing/overview", response_model=Envelope[BillingOverviewOut])
def billing_overview(agent: Agent, services: ServicesDep) -> Response:
    """Wallet balance, auto-funding, default card, subscriptions and recent charges."""
    return ok(billing.overview(services, account_id=agent.account_id))


@router.get("/billing/info", response_model=Envelope[BillingInfoOut])
def get_billing_info(agent: Agent, services: ServicesDep) -> Response:
    return ok(billing.info(services, account_id=agent.account_id))


@router.put("/billing/info", response_model=Envelope[BillingInfoOut])
def update_billing_info(body: BillingInfoUpdate, agent: Agent, services: ServicesDep) -> Response:
    """Update the fields given; the others keep their values (null clears a field)."""
    # This route takes no Idempotency-Key: setting the same fields twice is the same.
    return respond(
        billing.update_info(services, call=Call(), account_id=agent.account_id, body=body)
    )
