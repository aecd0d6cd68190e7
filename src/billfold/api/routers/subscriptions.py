"""Agent endpoints of plans and subscriptions, and the operator's plan management."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from billfold.accounts.service import get_account
from billfold.api.deps import (
    Agent,
    AgentIdempotent,
    Operator,
    OperatorIdempotent,
    Outcome,
    ServicesDep,
)
from billfold.api.responses import ok
from billfold.api.routers.checkout import public_base, subscribe_link
from billfold.api.routing import DecimalJSONRoute
from billfold.checkout import service as checkout
from billfold.errors import Conflict, ErrorCode
from billfold.money import MIN_FUNDING, from_micros, to_micros
from billfold.schemas import ERROR_RESPONSES, Envelope
from billfold.subscriptions import changes, plans, start, views
from billfold.subscriptions.models import Subscription
from billfold.subscriptions.schemas import (
    CancelRequest,
    ChangePlanRequest,
    ChargeAmountRequest,
    ConfirmSubscriptionCheckoutRequest,
    CreatePlanRequest,
    CreateSubscriptionRequest,
    OperatorSubscriptionRequest,
    PlanOut,
    PlansOut,
    UpdatePlanRequest,
)
from billfold.subscriptions.states import PlanKind, SubscriptionStatus
from billfold.wallet import service as wallet

router = APIRouter(route_class=DecimalJSONRoute, tags=["subscriptions"], responses=ERROR_RESPONSES)
admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["plans"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)

PAYMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    402: {"description": "The card was declined (data holds the subscription and payment)"}
}
SubscriptionId = Annotated[str, Path(min_length=1, max_length=40)]
PlanIdPath = Annotated[int, Path(ge=1, le=2_147_483_647)]
AccountIdPath = Annotated[str, Path(min_length=1, max_length=40)]


def _subscription(services: ServicesDep, account_id: str, subscription_id: str) -> Response:
    with services.database.read() as session:
        sub = views.get_for_account(session, account_id=account_id, subscription_id=subscription_id)
        return ok(views.view(session, sub))


@router.get("/subscriptions/plans", response_model=Envelope[PlansOut])
def list_plans(agent: Agent, services: ServicesDep) -> Response:
    """The plans an agent can subscribe to, and the pay-as-you-go wallet option."""
    with services.database.read() as session:
        items = [plans.plan_view(p) for p in plans.list_plans(session, public=True)]
    return ok(
        {
            "subscription_plans": items,
            "pay_as_you_go": {
                "available": True,
                "minimum_topup_usd": MIN_FUNDING,
                "auto_payments": {"supported": True},
            },
        }
    )


@router.get("/subscriptions", response_model=Envelope[dict[str, Any]])
def list_subscriptions(agent: Agent, services: ServicesDep) -> Response:
    """The account's subscriptions of every kind (normal, addon, enterprise), newest first."""
    with services.database.read() as session:
        subs = views.list_for_account(session, agent.account_id, live_only=False)
        items = [views.view(session, s) for s in subs]
    return ok({"items": items, "active": [i for i in items if i["status"] in ACTIVE_VIEW]})


ACTIVE_VIEW = (
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.PAST_DUE,
    SubscriptionStatus.PAUSED,
    SubscriptionStatus.UNPAID,
)


@router.post(
    "/subscriptions",
    response_model=Envelope[dict[str, Any]],
    status_code=201,
    responses=PAYMENT_RESPONSES,
)
def create_subscription(
    body: CreateSubscriptionRequest,
    agent: Agent,
    services: ServicesDep,
    request: Request,
    idem: AgentIdempotent,
) -> Response:
    """With payment_method_id: the first period is charged now (headless) and the answer is
    the subscription. Without: a checkout_url for a human; confirm with session_id."""
    if body.payment_method_id is None:
        ttl = timedelta(minutes=services.settings.payment_link_ttl_minutes)
        base = public_base(services, request)
        success_url = str(body.success_url) if body.success_url else None

        def link_handler(session: Session) -> Outcome:
            return 201, subscribe_link(
                session,
                account_id=agent.account_id,
                plan_id=body.plan_id,
                ttl=ttl,
                base=base,
                success_url=success_url,
            )

        return idem.atomic(link_handler)

    def handler() -> Outcome:
        return 201, start.start(
            services,
            account_id=agent.account_id,
            plan_id=body.plan_id,
            payment_method_id=body.payment_method_id,
        )

    return idem.phased(handler)


@router.post("/subscriptions/confirm-checkout", response_model=Envelope[dict[str, Any]])
def confirm_subscription_checkout(
    body: ConfirmSubscriptionCheckoutRequest, agent: Agent, services: ServicesDep
) -> Response:
    """The subscription started when the human paid; this reports it, the same every time.
    409 checkout_not_completed until then, 410 once the link expired unpaid."""
    with services.database.read() as session:
        session_row = checkout.confirm(
            session, account_id=agent.account_id, session_id=body.session_id, purpose="subscribe"
        )
        if session_row.subscription_id is None:
            raise Conflict(
                "The payment was taken after this account had already subscribed in this "
                "place, so it was credited to the wallet instead.",
                code=ErrorCode.SUBSCRIPTION_EXISTS,
                details={
                    "session_id": session_row.id,
                    "payment_intent_id": session_row.payment_intent_id,
                },
            )
        sub = views.get_for_account(
            session, account_id=agent.account_id, subscription_id=session_row.subscription_id
        )
        return ok({**views.view(session, sub), "session_id": session_row.id})


@router.post(
    "/subscriptions/charge-amount",
    response_model=Envelope[dict[str, Any]],
    status_code=201,
    responses=PAYMENT_RESPONSES,
)
def charge_amount(
    body: ChargeAmountRequest, agent: Agent, services: ServicesDep, idem: AgentIdempotent
) -> Response:
    """A one-off charge of $5 to $10,000 to the default card (or the card given), credited
    to the wallet as purchased credit and invoiced."""

    def handler() -> Outcome:
        funded = wallet.fund_wallet(
            services.database,
            services.processor,
            account_id=agent.account_id,
            amount_micros=to_micros(body.amount),
            payment_method_id=body.payment_method_id,
            idempotency_key=idem.key,
            purpose="subscription_charge",
        )
        return 201, {
            "payment_intent_id": funded.payment.id,
            "status": funded.payment.status,
            "amount": from_micros(funded.payment.amount_micros),
            "currency": funded.payment.currency,
            "balance": from_micros(funded.wallet.balance_micros),
            "transaction_id": funded.transaction_id,
        }

    return idem.phased(handler)


@router.get("/subscriptions/{subscription_id}", response_model=Envelope[dict[str, Any]])
def get_subscription(
    agent: Agent, services: ServicesDep, subscription_id: SubscriptionId
) -> Response:
    return _subscription(services, agent.account_id, subscription_id)


@router.get("/subscriptions/{subscription_id}/status", response_model=Envelope[dict[str, Any]])
def subscription_status(
    agent: Agent, services: ServicesDep, subscription_id: SubscriptionId
) -> Response:
    """Status, plan, current period, scheduled change, latest invoice and its payment,
    next retry time."""
    return _subscription(services, agent.account_id, subscription_id)


@router.put(
    "/subscriptions/{subscription_id}",
    response_model=Envelope[dict[str, Any]],
    responses=PAYMENT_RESPONSES,
)
def change_plan(
    body: ChangePlanRequest,
    agent: Agent,
    services: ServicesDep,
    idem: AgentIdempotent,
    subscription_id: SubscriptionId,
) -> Response:
    """Upgrade now with a prorated charge, or downgrade at the end of the period."""

    def handler() -> Outcome:
        return 200, changes.change_plan(
            services,
            account_id=agent.account_id,
            subscription_id=subscription_id,
            new_plan_id=body.new_plan_id,
        )

    return idem.phased(handler)


def _state_change(
    idem: AgentIdempotent, action: Callable[..., Subscription], **kwargs: Any
) -> Response:
    """A change made in one transaction (no card involved), answered with the result."""

    def handler(session: Session) -> Outcome:
        sub = action(session, **kwargs)
        return 200, views.view(session, sub)

    return idem.atomic(handler)


@router.post("/subscriptions/{subscription_id}/pause", response_model=Envelope[dict[str, Any]])
def pause_subscription(
    agent: Agent, idem: AgentIdempotent, subscription_id: SubscriptionId
) -> Response:
    """No renewals and no credit expiry while paused; the remaining time is kept."""
    return _state_change(
        idem, changes.pause, account_id=agent.account_id, subscription_id=subscription_id
    )


@router.post("/subscriptions/{subscription_id}/resume", response_model=Envelope[dict[str, Any]])
def resume_subscription(
    agent: Agent, idem: AgentIdempotent, subscription_id: SubscriptionId
) -> Response:
    """The kept time resumes: the period end moves by how long it was paused."""
    return _state_change(
        idem,
        changes.resume,
        account_id=agent.account_id,
        subscription_id=subscription_id,
    )


@router.post("/subscriptions/{subscription_id}/cancel", response_model=Envelope[dict[str, Any]])
def cancel_subscription(
    agent: Agent,
    idem: AgentIdempotent,
    subscription_id: SubscriptionId,
    body: CancelRequest | None = None,
) -> Response:
    """at_period_end (default true): renewals stop then. false: ends now and credits the
    unused time to the wallet."""
    return _state_change(
        idem,
        changes.cancel,
        account_id=agent.account_id,
        subscription_id=subscription_id,
        at_period_end=body.at_period_end if body is not None else True,
    )


@router.post(
    "/subscriptions/{subscription_id}/reset-cycle",
    response_model=Envelope[dict[str, Any]],
    responses=PAYMENT_RESPONSES,
)
def reset_cycle(
    agent: Agent, services: ServicesDep, idem: AgentIdempotent, subscription_id: SubscriptionId
) -> Response:
    """A new period starts now, charged in full less the unused part of the current one."""

    def handler() -> Outcome:
        return 200, changes.reset_cycle(
            services, account_id=agent.account_id, subscription_id=subscription_id
        )

    return idem.phased(handler)


@router.post(
    "/subscriptions/{subscription_id}/fix-payment",
    response_model=Envelope[dict[str, Any]],
    responses=PAYMENT_RESPONSES,
)
def fix_payment(
    agent: Agent, services: ServicesDep, idem: AgentIdempotent, subscription_id: SubscriptionId
) -> Response:
    """Retry the failed payment now with the current default card."""

    def handler() -> Outcome:
        return 200, changes.fix_payment(
            services, account_id=agent.account_id, subscription_id=subscription_id
        )

    return idem.phased(handler)


# --- operator -----------------------------------------------------------------------


@admin_router.get("/plans", response_model=Envelope[list[PlanOut]])
def admin_list_plans(services: ServicesDep) -> Response:
    with services.database.read() as session:
        return ok([plans.plan_view(p) for p in plans.list_plans(session, public=False)])


@admin_router.post("/plans", response_model=Envelope[PlanOut], status_code=201)
def admin_create_plan(body: CreatePlanRequest, idem: OperatorIdempotent) -> Response:
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
        return 201, plans.plan_view(plan)

    return idem.atomic(handler)


@admin_router.get("/plans/{plan_id}", response_model=Envelope[PlanOut])
def admin_get_plan(services: ServicesDep, plan_id: PlanIdPath) -> Response:
    with services.database.read() as session:
        return ok(plans.plan_view(plans.get_plan(session, plan_id)))


@admin_router.patch("/plans/{plan_id}", response_model=Envelope[PlanOut])
def admin_update_plan(
    body: UpdatePlanRequest, idem: OperatorIdempotent, plan_id: PlanIdPath
) -> Response:
    def handler(session: Session) -> Outcome:
        plan = plans.update_plan(session, plan_id, name=body.name, features=body.features)
        return 200, plans.plan_view(plan)

    return idem.atomic(handler)


@admin_router.post("/plans/{plan_id}/archive", response_model=Envelope[PlanOut])
def admin_archive_plan(idem: OperatorIdempotent, plan_id: PlanIdPath) -> Response:
    def handler(session: Session) -> Outcome:
        return 200, plans.plan_view(plans.archive_plan(session, plan_id))

    return idem.atomic(handler)


@admin_router.post(
    "/accounts/{account_id}/subscriptions",
    response_model=Envelope[dict[str, Any]],
    status_code=201,
    responses=PAYMENT_RESPONSES,
)
def admin_create_subscription(
    body: OperatorSubscriptionRequest,
    services: ServicesDep,
    idem: OperatorIdempotent,
    account_id: AccountIdPath,
) -> Response:
    """Subscribe an account to any plan, enterprise included, charged to its default card
    (or the card given)."""
    with services.database.read() as session:
        get_account(session, account_id)

    def handler() -> Outcome:
        return 201, start.start(
            services,
            account_id=account_id,
            plan_id=body.plan_id,
            payment_method_id=body.payment_method_id,
            created_by="operator",
            kinds=plans.PLAN_KINDS,
        )

    return idem.phased(handler)


@admin_router.get("/accounts/{account_id}/subscriptions", response_model=Envelope[dict[str, Any]])
def admin_list_subscriptions(services: ServicesDep, account_id: AccountIdPath) -> Response:
    with services.database.read() as session:
        get_account(session, account_id)
        subs = views.list_for_account(session, account_id, live_only=False)
        return ok({"items": [views.view(session, s) for s in subs]})
