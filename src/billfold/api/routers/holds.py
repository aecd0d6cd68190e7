"""Usage holds for the operator's platform: reserve funds, then capture or release them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from billfold.api.deps import Operator, OperatorCall, ServicesDep, respond
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import holds
from billfold.schemas import ERROR_RESPONSES, Envelope
from billfold.wallet.schemas import (
    UsageHoldCaptureRequest,
    UsageHoldOut,
    UsageHoldReleaseRequest,
    UsageHoldRequest,
)

admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["usage"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)

NOT_ACTIVE: dict[int | str, dict[str, Any]] = {
    409: {"description": "hold_not_active: already captured, released or expired"}
}


@admin_router.post(
    "/usage-holds",
    response_model=Envelope[UsageHoldOut],
    status_code=201,
    responses={402: {"description": "insufficient_funds: nothing was held"}},
)
async def create_usage_hold(
    body: UsageHoldRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    """Reserve an amount of an account's wallet for usage to be captured later; the balance
    drops by it until the hold is captured, released or expires (ttl_seconds)."""
    return respond(await holds.create_hold_async(services, call=call, body=body))


@admin_router.get("/usage-holds/{hold_id}", response_model=Envelope[UsageHoldOut])
def get_usage_hold(
    hold_id: str,
    services: ServicesDep,
    account_id: str | None = Query(default=None, min_length=1, max_length=40),
) -> Response:
    """A usage hold (of `account_id`, if given)."""
    return ok(holds.get_hold(services, hold_id=hold_id, account_id=account_id))


@admin_router.post(
    "/usage-holds/{hold_id}/capture",
    response_model=Envelope[UsageHoldOut],
    responses={
        409: {
            "description": "hold_not_active (already captured, released or expired), or "
            "hold_amount_exceeded (more than held)"
        }
    },
)
async def capture_usage_hold(
    hold_id: str,
    services: ServicesDep,
    call: OperatorCall,
    body: UsageHoldCaptureRequest | None = None,
) -> Response:
    """Charge all (no amount) or part of a hold as a usage charge; the rest goes back to
    the wallet."""
    body = body or UsageHoldCaptureRequest()
    return respond(await holds.capture_hold_async(services, call=call, hold_id=hold_id, body=body))


@admin_router.post(
    "/usage-holds/{hold_id}/release",
    response_model=Envelope[UsageHoldOut],
    responses=NOT_ACTIVE,
)
def release_usage_hold(
    hold_id: str,
    services: ServicesDep,
    call: OperatorCall,
    body: UsageHoldReleaseRequest | None = None,
) -> Response:
    """Give a whole hold back to the wallet."""
    body = body or UsageHoldReleaseRequest()
    return respond(holds.release_hold(services, call=call, hold_id=hold_id, body=body))
