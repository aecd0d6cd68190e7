"""Plans: what an account can subscribe to, managed by the operator."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.errors import ErrorCode, InvalidRequest, NotFound
from billfold.ledger.models import Wallet
from billfold.money import from_micros
from billfold.subscriptions.models import Plan
from billfold.subscriptions.states import PlanKind, PlanStatus

PLAN_KINDS = tuple(PlanKind)
PERIODS = ("month", "year")
# Kinds an agent may subscribe to itself; enterprise subscriptions are the operator's.
SELF_SERVE_KINDS = (PlanKind.NORMAL, PlanKind.ADDON)


def plan_not_found(plan_id: int) -> NotFound:
    return NotFound("No such plan.", code=ErrorCode.PLAN_NOT_FOUND, details={"plan_id": plan_id})


def get_plan(session: Session, plan_id: int) -> Plan:
    plan = session.get(Plan, plan_id)
    if plan is None:
        raise plan_not_found(plan_id)
    return plan


def subscribable_plan(
    session: Session, plan_id: int, *, kinds: tuple[PlanKind, ...], account_id: str
) -> Plan:
    """An active plan of one of `kinds` in the account's currency; archived plans, other
    kinds and other currencies are refused clearly (Billfold does no currency exchange)."""
    plan = get_plan(session, plan_id)
    currency = session.scalar(select(Wallet.currency).where(Wallet.account_id == account_id))
    if currency is not None and plan.currency != currency:
        raise InvalidRequest(
            f"This plan is priced in {plan.currency}; this account pays in {currency}.",
            code=ErrorCode.CURRENCY_MISMATCH,
            details={"plan_id": plan_id, "plan_currency": plan.currency, "currency": currency},
        )
    if plan.status != PlanStatus.ACTIVE:
        raise InvalidRequest(
            "This plan is archived and takes no new subscriptions.",
            code=ErrorCode.PLAN_NOT_AVAILABLE,
            details={"plan_id": plan_id},
        )
    if plan.kind not in kinds:
        raise InvalidRequest(
            f"Plans of kind '{plan.kind}' are set up by the operator.",
            code=ErrorCode.PLAN_NOT_AVAILABLE,
            details={"plan_id": plan_id, "kind": plan.kind},
        )
    return plan


def plan_view(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "name": plan.name,
        "price": from_micros(plan.price_micros),
        "currency": plan.currency,
        "period": plan.period,
        "features": list(plan.features),
        "kind": str(plan.kind),
        "included_credits": (
            from_micros(plan.included_credits_micros)
            if plan.included_credits_micros is not None
            else None
        ),
        "trial_days": plan.trial_days,
        "status": str(plan.status),
    }


def list_plans(session: Session, *, public: bool) -> list[Plan]:
    """Public: the active plans an agent can pick (normal, then addons, cheapest first)."""
    query = select(Plan)
    if public:
        query = query.where(Plan.status == PlanStatus.ACTIVE, Plan.kind.in_(SELF_SERVE_KINDS))
    plans = list(session.scalars(query))
    order: dict[str, int] = {kind: position for position, kind in enumerate(PLAN_KINDS)}
    return sorted(plans, key=lambda p: (order[p.kind], p.price_micros, p.id))


def create_plan(
    session: Session,
    *,
    name: str,
    price_micros: int,
    currency: str,
    period: str,
    features: list[str],
    kind: PlanKind,
    included_credits_micros: int | None,
    trial_days: int | None,
) -> Plan:
    plan = Plan(
        name=name,
        price_micros=price_micros,
        currency=currency,
        period=period,
        features=features,
        kind=kind,
        included_credits_micros=included_credits_micros,
        trial_days=trial_days,
        status=PlanStatus.ACTIVE,
        created_at=now(),
        updated_at=now(),
    )
    session.add(plan)
    session.flush()
    return plan


def update_plan(
    session: Session, plan_id: int, *, name: str | None, features: list[str] | None
) -> Plan:
    """Rename or change features; price and period stay (subscribers agreed to them)."""
    plan = get_plan(session, plan_id)
    if name is not None:
        plan.name = name
    if features is not None:
        plan.features = features
    plan.updated_at = now()
    session.flush()
    return plan


def archive_plan(session: Session, plan_id: int) -> Plan:
    """No new subscriptions; existing ones keep renewing on it."""
    plan = get_plan(session, plan_id)
    plan.status = PlanStatus.ARCHIVED
    plan.updated_at = now()
    session.flush()
    return plan
