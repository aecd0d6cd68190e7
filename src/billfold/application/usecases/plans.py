"""Plan use cases: the plans an agent can pick, and the operator's plan management."""

from __future__ import annotations

from sqlalchemy.orm import Session

from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_operator
from billfold.money import MIN_FUNDING, to_micros
from billfold.services import Services
from billfold.subscriptions import plans
from billfold.subscriptions.models import Plan
from billfold.subscriptions.schemas import (
    AutoPaymentsOut,
    CreatePlanRequest,
    PayAsYouGoOut,
    PlanOut,
    PlansOut,
    UpdatePlanRequest,
)
from billfold.subscriptions.states import PlanKind


def _out(plan: Plan) -> PlanOut:
    return PlanOut.model_validate(plans.plan_view(plan))


def catalogue(app: Services) -> PlansOut:
    """The plans an agent can subscribe to, and the pay-as-you-go wallet option."""
    with app.database.read() as session:
        items = [_out(p) for p in plans.list_plans(session, public=True)]
    return PlansOut(
        subscription_plans=items,
        pay_as_you_go=PayAsYouGoOut(
            available=True,
            minimum_topup_usd=MIN_FUNDING,
            auto_payments=AutoPaymentsOut(supported=True),
        ),
    )


def list_all(app: Services) -> list[PlanOut]:
    """Every plan, archived and enterprise ones included."""
    with app.database.read() as session:
        return [_out(p) for p in plans.list_plans(session, public=False)]


def get(app: Services, *, plan_id: int) -> PlanOut:
    with app.database.read() as session:
        return _out(plans.get_plan(session, plan_id))


def create(app: Services, *, call: Call, body: CreatePlanRequest) -> Reply:
    def handler(session: Session) -> Outcome:
        plan = plans.create_plan(
            session,
            name=body.name,
            price_micros=to_micros(body.price),
            currency=body.currency,
            period=body.period,
            features=body.features,
            kind=PlanKind(body.kind),
            included_credits_micros=(
                to_micros(body.included_credits) if body.included_credits is not None else None
            ),
            trial_days=body.trial_days,
        )
        return 201, _out(plan)

    return for_operator(app, call).atomic(handler)


def update(app: Services, *, call: Call, plan_id: int, body: UpdatePlanRequest) -> Reply:
    """Rename or change features; price and period stay (subscribers agreed to them)."""

    def handler(session: Session) -> Outcome:
        plan = plans.update_plan(session, plan_id, name=body.name, features=body.features)
        return 200, _out(plan)

    return for_operator(app, call).atomic(handler)


def archive(app: Services, *, call: Call, plan_id: int) -> Reply:
    """No new subscriptions; existing ones keep renewing on it."""

    def handler(session: Session) -> Outcome:
        return 200, _out(plans.archive_plan(session, plan_id))

    return for_operator(app, call).atomic(handler)
