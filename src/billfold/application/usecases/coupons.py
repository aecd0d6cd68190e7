"""Coupon use cases: validate and redeem for agents; create, list and archive for the operator."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account, for_operator
from billfold.coupons import service
from billfold.coupons.models import Coupon
from billfold.coupons.schemas import (
    CouponOut,
    CouponValidationOut,
    CreateCouponRequest,
    PurchaseAmount,
    RedeemCouponRequest,
    RedemptionOut,
)
from billfold.money import percent_to_basis_points, to_micros
from billfold.services import Services


def validate(
    app: Services, *, account_id: str, code: str, purchase_amount: PurchaseAmount | None = None
) -> CouponValidationOut:
    """Whether a coupon can be redeemed by this account; a refusal is data, not an error."""
    with app.database.read() as session:
        return CouponValidationOut.model_validate(
            service.validate(
                session,
                account_id=account_id,
                code=code,
                purchase_micros=to_micros(purchase_amount) if purchase_amount else None,
            )
        )


def redeem(app: Services, *, call: Call, account_id: str, body: RedeemCouponRequest) -> Reply:
    """Redeem a coupon: credit now, or a bonus on a card purchase of purchase_amount."""

    def handler() -> Outcome:
        result = service.redeem(
            app.database,
            app.processor,
            account_id=account_id,
            code=body.coupon_code,
            purchase_micros=to_micros(body.purchase_amount) if body.purchase_amount else None,
            payment_method_id=body.payment_method_id,
            idempotency_key=call.key,
        )
        return 200, RedemptionOut.model_validate(service.redemption_view(result))

    return for_account(app, call, account_id).phased(handler)


def create(app: Services, *, call: Call, body: CreateCouponRequest) -> Reply:
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
        return 201, CouponOut.model_validate(service.coupon_view(coupon))

    return for_operator(app, call).atomic(handler)


def list_all(app: Services) -> list[CouponOut]:
    """Every coupon, newest first."""
    with app.database.read() as session:
        coupons = session.scalars(select(Coupon).order_by(Coupon.created_at.desc()))
        return [CouponOut.model_validate(service.coupon_view(c)) for c in coupons]


def archive(app: Services, *, call: Call, code: str) -> Reply:
    """Stop a coupon from being redeemed (redemptions already made stay)."""

    def handler(session: Session) -> Outcome:
        return 200, CouponOut.model_validate(
            service.coupon_view(service.archive(session, code=code))
        )

    return for_operator(app, call).atomic(handler)
