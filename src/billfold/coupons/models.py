"""Coupons the operator issues and their redemptions by accounts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros


class Coupon(Base):
    __tablename__ = "coupons"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)  # stored upper-case
    # credit: promotional credit on redemption; bonus_percent / bonus_fixed: extra
    # promotional credit on a card purchase of at least min_purchase.
    kind: Mapped[str] = mapped_column(String(16))
    amount_micros: Mapped[int | None] = mapped_column(Micros)  # credit or fixed bonus
    percent_basis_points: Mapped[int | None] = mapped_column(Integer)  # 12.5% → 1250
    min_purchase_micros: Mapped[int] = mapped_column(Micros, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    valid_from: Mapped[datetime | None]
    valid_until: Mapped[datetime | None]
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    redemptions: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(12), default="active")  # active, archived
    created_at: Mapped[datetime] = mapped_column(default=now)


class CouponRedemption(Base):
    __tablename__ = "coupon_redemptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # pending while a purchase coupon's card charge is under way; then redeemed.
    status: Mapped[str] = mapped_column(String(12))
    credit_micros: Mapped[int] = mapped_column(Micros, default=0)
    purchase_micros: Mapped[int] = mapped_column(Micros, default=0)
    payment_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (
        UniqueConstraint("coupon_id", "account_id"),  # once per account
        Index("ix_coupon_redemptions_account_id", "account_id"),
    )
