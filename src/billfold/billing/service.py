"""Billing info (partial updates, validated) and the billing overview."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.billing import tax_ids
from billfold.billing.models import FIELDS, BillingInfo
from billfold.clock import now
from billfold.errors import InvalidRequest
from billfold.payments import service as payments
from billfold.payments.models import Payment
from billfold.wallet import service as wallet_service

RECENT = 10


def info_view(info: BillingInfo | None) -> dict[str, Any]:
    values = {field: getattr(info, field) if info else None for field in FIELDS}
    values["address"] = {
        "line1": values["address_line1"],
        "line2": values["address_line2"],
        "city": values["address_city"],
        "state": values["address_state"],
        "postal_code": values["address_postal_code"],
        "country": values["address_country"],
    }
    return values


def get_info(session: Session, account_id: str) -> BillingInfo | None:
    return session.get(BillingInfo, account_id)


def update_info(session: Session, *, account_id: str, changes: dict[str, Any]) -> BillingInfo:
    """Apply the fields given; check the tax id against its type as they stand afterwards."""
    info = session.get(BillingInfo, account_id, with_for_update=True)
    if info is None:
        info = BillingInfo(account_id=account_id)
        session.add(info)
    for field, value in changes.items():
        setattr(info, field, value)
    if info.tax_id is not None or info.tax_id_type is not None:
        if info.tax_id is None or info.tax_id_type is None:
            missing = "tax_id_type" if info.tax_id_type is None else "tax_id"
            raise InvalidRequest(
                "tax_id and tax_id_type go together.",
                details={"field": missing},
            )
        try:
            info.tax_id = tax_ids.check(info.tax_id_type, info.tax_id)
        except ValueError as exc:
            field = "tax_id_type" if "tax_id_type" in str(exc) else "tax_id"
            raise InvalidRequest(f"{field}: {exc}", details={"field": field}) from None
    info.updated_at = now()
    session.flush()
    return info


def payment_summary(payment: Payment) -> dict[str, Any]:
    view = payments.payment_view(payment)
    return {
        key: view[key]
        for key in (
            "payment_intent_id",
            "status",
            "purpose",
            "amount",
            "currency",
            "created_at",
            "decline_code",
        )
    }


def overview(session: Session, account_id: str) -> dict[str, Any]:
    from billfold.subscriptions import service as subscriptions  # builds on billing

    wallet = wallet_service.get_wallet(session, account_id)
    balance = wallet_service.balance_view(session, wallet)
    default = payments.default_payment_method(session, account_id)
    recent = session.scalars(
        select(Payment)
        .where(Payment.account_id == account_id)
        .order_by(Payment.created_at.desc(), Payment.id.desc())
        .limit(RECENT)
    )
    transactions, _ = wallet_service.list_transactions(
        session, account_id=account_id, type=None, limit=RECENT, offset=0
    )
    return {
        "wallet_balance": balance["balance"],
        "currency": balance["currency"],
        "balance_breakdown": balance["breakdown"],
        "auto_funding": balance["auto_funding"],
        "default_payment_method": payments.payment_method_view(default) if default else None,
        "active_subscriptions": [
            subscriptions.view(session, sub)
            for sub in subscriptions.list_for_account(session, account_id, live_only=True)
            if sub.status != "incomplete"
        ],
        "recent_charges": [payment_summary(p) for p in recent],
        "recent_transactions": [wallet_service.transaction_view(t) for t in transactions],
    }
