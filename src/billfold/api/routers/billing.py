"""Agent endpoints for billing info and the billing overview."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from billfold.api.deps import Agent, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application import overview
from billfold.billing import service
from billfold.billing.schemas import BillingInfoOut, BillingInfoUpdate
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["billing"], responses=ERROR_RESPONSES)


@router.get("/billing/overview", response_model=Envelope[dict[str, Any]])
def billing_overview(agent: Agent, services: ServicesDep) -> Response:
    """Wallet balance, auto-funding, default card, subscriptions and recent charges."""
    with services.database.read() as session:
        return ok(overview.overview(session, agent.account_id))


@router.get("/billing/info", response_model=Envelope[BillingInfoOut])
def get_billing_info(agent: Agent, services: ServicesDep) -> Response:
    with services.database.read() as session:
        return ok(service.info_view(service.get_info(session, agent.account_id)))


@router.put("/billing/info", response_model=Envelope[BillingInfoOut])
def update_billing_info(body: BillingInfoUpdate, agent: Agent, services: ServicesDep) -> Response:
    """Update the fields given; the others keep their values (null clears a field)."""
    changes = body.model_dump(include=body.model_fields_set)
    with services.database.transaction() as session:
        info = service.update_info(session, account_id=agent.account_id, changes=changes)
        return ok(service.info_view(info))
