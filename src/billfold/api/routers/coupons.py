"""Coupon endpoints: validate and redeem for agents; create, list, archive for the operator."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from billfold.api.deps import (
    Agent,
    AgentCall,
    Call,
    Operator,
    OperatorCall,
    ServicesDep,
    respond,
)
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import coupons
from billfold.coupons.schemas import (
    CouponCode,
    CouponOut,
    CouponValidationOut,
    CreateCouponRequest,
    PurchaseAmount,
    RedeemCouponRequest,
    RedemptionOut,
)
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["coupons"], responses=ERROR_RESPONSES)
admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["coupons"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)


@router.get("/wallet/coupons/validate", response_model=Envelope[CouponValidationOut])
def validate_coupon(
    agent: Agent,
    services: ServicesDep,
    coupon_code: CouponCode = Query(),
    purchase_amount: PurchaseAmount | None = Query(default=None),
) -> Response:
    """Whether a coupon can be redeemed by this account; a refusal is data, not an error."""
    return ok(
        coupons.validate(
            services,
            account_id=agent.account_id,
            code=coupon_code,
            purchase_amount=purchase_amount,
        )
    )


@router.post(
    "/wallet/coupons/redeem",
    response_model=Envelope[RedemptionOut],
    responses={402: {"description": "The purchase's card was declined"}},
)
def redeem_coupon(
    body: RedeemCouponRequest, agent: Agent, services: ServicesDep, call: AgentCall
) -> Response:
    """Redeem a coupon: credit now, or a bonus on a card purchase of purchase_amount."""
    return respond(coupons.redeem(services, call=call, account_id=agent.account_id, body=body))


@admin_router.post("/coupons", response_model=Envelope[CouponOut], status_code=201)
def create_coupon(body: CreateCouponRequest, services: ServicesDep, call: OperatorCall) -> Response:
    return respond(coupons.create(services, call=call, body=body))


@admin_router.get("/coupons", response_model=Envelope[list[CouponOut]])
def list_coupons(services: ServicesDep) -> Response:
    return ok(coupons.list_all(services))


@admin_router.post("/coupons/{code}/archive", response_model=Envelope[CouponOut])
def archive_coupon(code: str, services: ServicesDep) -> Response:
    """Stop a coupon from being redeemed (redemptions already made stay)."""
    # This route takes no Idempotency-Key: archiving twice is archiving once.
    return respond(coupons.archive(services, call=Call(), code=code))
