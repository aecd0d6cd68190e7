"""Billing info: partial updates, tax ids validated against their type."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from billfold.billing import tax_ids
from billfold.billing.models import FIELDS, BillingInfo
from billfold.clock import now
from billfold.errors import InvalidRequest


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
