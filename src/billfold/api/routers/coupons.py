"""Coupon endpoints: validate and redeem for agents; create, list, archive for the operator."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.api.deps import (
    Agent,
    AgentIdempotent,
    Operator,
    OperatorIdempotent,
    Outcome,
    ServicesDep,
)
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.coupons import service
from billfold.coupons.models import Coupon
from billfold.coupons.schemas import (
    CouponCode,
    CouponOut,
    CouponValidationOut,
    CreateCouponRequest,
    PurchaseAmount,
    RedeemCouponRequest,
    RedemptionOut,
)
from billfold.money import percent_to_basis_points, to_micros
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
    with services.database.read() as session:
        return ok(
            service.validate(
                session,
                account_id=agent.account_id,
                code=coupon_code,
                purchase_micros=to_micros(purchase_amount) if purchase_amount else None,
            )
        )


@router.post(
    "/wallet/coupons/redeem",
    response_model=Envelope[RedemptionOut],
    responses={402: {"description": "The purchase's card was declined"}},
)
def redeem_coupon(
    body: RedeemCouponRequest, agent: Agent, services: ServicesDep, idem: AgentIdempotent
) -> Response:
    """Redeem a coupon: credit now, or a bonus on a card purchase of purchase_amount."""

    def handler() -> Outcome:
        result = service.redeem(
            services.database,
            services.processor,
            account_id=agent.account_id,
            code=body.coupon_code,
            purchase_micros=to_micros(body.purchase_amount) if body.purchase_amount else None,
            payment_method_id=body.payment_method_id,
            idempotency_key=idem.key,
        )
        return 200, service.redemption_view(result)

    return idem.phased(handler)


@admin_router.post("/coupons", response_model=Envelope[CouponOut], status_code=201)
def create_coupon(body: CreateCouponRequest, idem: OperatorIdempotent) -> Response:
    def handler(session: Session) -> Outcome:
        coupon = service.create(
            session,
            values={
                "code": body.code,
                "kind": body.kind,
                "amount_micros": to_micros(body.amount) if body.amount is not None else None,
                "percent_basis_points": percent_to_basis_points(body.percent)
                if body.percent
                else None,
                "min_purchase_micros": to_micros(body.min_purchase) if body.min_purchase else 0,
                "currency": body.currency,
                "valid_from": body.valid_from,
                "valid_until": body.valid_until,
                "max_redemptions": body.max_redemptions,
            },
        )
        return 201, service.coupon_view(coupon)

    return idem.atomic(handler)


@admin_router.get("/coupons", response_model=Envelope[list[CouponOut]])
def list_coupons(services: ServicesDep) -> Response:
    with services.database.read() as session:
        coupons = session.scalars(select(Coupon).order_by(Coupon.created_at.desc()))
        return ok([service.coupon_view(c) for c in coupons])


@admin_router.post("/coupons/{code}/archive", response_model=Envelope[CouponOut])
def archive_coupon(code: str, services: ServicesDep) -> Response:
    """Stop a coupon from being redeemed (redemptions already made stay)."""
    with services.database.transaction() as session:
        return ok(service.coupon_view(service.archive(session, code=code)))
