"""Agent endpoints of plans and subscriptions, and the operator's plan management."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from billfold.api.deps import Agent, AgentCall, Operator, OperatorCall, ServicesDep, respond
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import plans, subscriptions
from billfold.schemas import ERROR_RESPONSES, Envelope
from billfold.subscriptions.schemas import (
    AccountSubscriptionsOut,
    CancelRequest,
    ChangePlanRequest,
    ChargeAmountOut,
    ChargeAmountRequest,
    ConfirmedSubscriptionOut,
    ConfirmSubscriptionCheckoutRequest,
    CreatePlanRequest,
    CreateSubscriptionRequest,
    OperatorSubscriptionRequest,
    PlanOut,
    PlansOut,
    SubscribeLinkOut,
    SubscriptionListOut,
    SubscriptionOut,
    UpdatePlanRequest,
)

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


@router.get("/subscriptions/plans", response_model=Envelope[PlansOut])
def list_plans(agent: Agent, services: ServicesDep) -> Response:
    """The plans an agent can subscribe to, and the pay-as-you-go wallet option."""
    return ok(plans.catalogue(services))


@router.get("/subscriptions", response_model=Envelope[SubscriptionListOut])
def list_subscriptions(agent: Agent, services: ServicesDep) -> Response:
    """The account's subscriptions of every kind (normal, addon, enterprise), newest first."""
    return ok(subscriptions.list_for_account(services, account_id=agent.account_id))


@router.post(
    "/subscriptions",
    response_model=Envelope[SubscriptionOut | SubscribeLinkOut],
    status_code=201,
    responses=PAYMENT_RESPONSES,
)
def create_subscription(
    body: CreateSubscriptionRequest,
    agent: Agent,
    services: ServicesDep,
    request: Request,
    call: AgentCall,
) -> Response:
    """With payment_method_id: the first period is charged now (headless) and the answer is
    the subscription. Without: a checkout_url for a human; confirm with session_id."""
    return respond(
        subscriptions.start(
            services,
            call=call,
            account_id=agent.account_id,
            body=body,
            base_url=str(request.base_url),
        )
    )


@router.post("/subscriptions/confirm-checkout", response_model=Envelope[ConfirmedSubscriptionOut])
def confirm_subscription_checkout(
    body: ConfirmSubscriptionCheckoutRequest, agent: Agent, services: ServicesDep
) -> Response:
    """The subscription started when the human paid; this reports it, the same every time.
    409 checkout_not_completed until then, 410 once the link expired unpaid."""
    return ok(subscriptions.confirm_checkout(services, account_id=agent.account_id, body=body))


@router.post(
    "/subscriptions/charge-amount",
    response_model=Envelope[ChargeAmountOut],
    status_code=201,
    responses=PAYMENT_RESPONSES,
)
def charge_amount(
    body: ChargeAmountRequest, agent: Agent, services: ServicesDep, call: AgentCall
) -> Response:
    """A one-off charge of $5 to $10,000 to the default card (or the card given), credited
    to the wallet as purchased credit and invoiced."""
    return respond(
        subscriptions.charge_amount(services, call=call, account_id=agent.account_id, body=body)
    )


@router.get("/subscriptions/{subscription_id}", response_model=Envelope[SubscriptionOut])
def get_subscription(
    agent: Agent, services: ServicesDep, subscription_id: SubscriptionId
) -> Response:
    return ok(
        subscriptions.get(services, account_id=agent.account_id, subscription_id=subscription_id)
    )


@router.get("/subscriptions/{subscription_id}/status", response_model=Envelope[SubscriptionOut])
def subscription_status(
    agent: Agent, services: ServicesDep, subscription_id: SubscriptionId
) -> Response:
    """Status, plan, current period, scheduled change, latest invoice and its payment,
    next retry time."""
    return ok(
        subscriptions.get(services, account_id=agent.account_id, subscription_id=subscription_id)
    )


@router.put(
    "/subscriptions/{subscription_id}",
    response_model=Envelope[SubscriptionOut],
    responses=PAYMENT_RESPONSES,
)
def change_plan(
    body: ChangePlanRequest,
    agent: Agent,
    services: ServicesDep,
    call: AgentCall,
    subscription_id: SubscriptionId,
) -> Response:
    """Upgrade now with a prorated charge, or downgrade at the end of the period."""
    return respond(
        subscriptions.change_plan(
            services,
            call=call,
            account_id=agent.account_id,
            subscription_id=subscription_id,
            body=body,
        )
    )


@router.post("/subscriptions/{subscription_id}/pause", response_model=Envelope[SubscriptionOut])
def pause_subscription(
    agent: Agent, services: ServicesDep, call: AgentCall, subscription_id: SubscriptionId
) -> Response:
    """No renewals and no credit expiry while paused; the remaining time is kept."""
    return respond(
        subscriptions.pause(
            services, call=call, account_id=agent.account_id, subscription_id=subscription_id
        )
    )


@router.post("/subscriptions/{subscription_id}/resume", response_model=Envelope[SubscriptionOut])
def resume_subscription(
    agent: Agent, services: ServicesDep, call: AgentCall, subscription_id: SubscriptionId
) -> Response:
    """The kept time resumes: the period end moves by how long it was paused."""
    return respond(
        subscriptions.resume(
            services, call=call, account_id=agent.account_id, subscription_id=subscription_id
        )
    )


@router.post("/subscriptions/{subscription_id}/cancel", response_model=Envelope[SubscriptionOut])
def cancel_subscription(
    agent: Agent,
    services: ServicesDep,
    call: AgentCall,
    subscription_id: SubscriptionId,
    body: CancelRequest | None = None,
) -> Response:
    """at_period_end (default true): renewals stop then. false: ends now and credits the
    unused time to the wallet."""
    return respond(
        subscriptions.cancel(
            services,
            call=call,
            account_id=agent.account_id,
            subscription_id=subscription_id,
            body=body if body is not None else CancelRequest(),
        )
    )


@router.post(
    "/subscriptions/{subscription_id}/reset-cycle",
    response_model=Envelope[SubscriptionOut],
    responses=PAYMENT_RESPONSES,
)
def reset_cycle(
    agent: Agent, services: ServicesDep, call: AgentCall, subscription_id: SubscriptionId
) -> Response:
    """A new period starts now, charged in full less the unused part of the current one."""
    return respond(
        subscriptions.reset_cycle(
            services, call=call, account_id=agent.account_id, subscription_id=subscription_id
        )
    )


@router.post(
    "/subscriptions/{subscription_id}/fix-payment",
    response_model=Envelope[SubscriptionOut],
    responses=PAYMENT_RESPONSES,
)
def fix_payment(
    agent: Agent, services: ServicesDep, call: AgentCall, subscription_id: SubscriptionId
) -> Response:
    """Retry the failed payment now with the current default card."""
    return respond(
        subscriptions.fix_payment(
            services, call=call, account_id=agent.account_id, subscription_id=subscription_id
        )
    )


# --- operator -----------------------------------------------------------------------


@admin_router.get("/plans", response_model=Envelope[list[PlanOut]])
def admin_list_plans(services: ServicesDep) -> Response:
    return ok(plans.list_all(services))


@admin_router.post("/plans", response_model=Envelope[PlanOut], status_code=201)
def admin_create_plan(
    body: CreatePlanRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    return respond(plans.create(services, call=call, body=body))


@admin_router.get("/plans/{plan_id}", response_model=Envelope[PlanOut])
def admin_get_plan(services: ServicesDep, plan_id: PlanIdPath) -> Response:
    return ok(plans.get(services, plan_id=plan_id))


@admin_router.patch("/plans/{plan_id}", response_model=Envelope[PlanOut])
def admin_update_plan(
    body: UpdatePlanRequest, services: ServicesDep, call: OperatorCall, plan_id: PlanIdPath
) -> Response:
    return respond(plans.update(services, call=call, plan_id=plan_id, body=body))


@admin_router.post("/plans/{plan_id}/archive", response_model=Envelope[PlanOut])
def admin_archive_plan(services: ServicesDep, call: OperatorCall, plan_id: PlanIdPath) -> Response:
    return respond(plans.archive(services, call=call, plan_id=plan_id))


@admin_router.post(
    "/accounts/{account_id}/subscriptions",
    response_model=Envelope[SubscriptionOut],
    status_code=201,
    responses=PAYMENT_RESPONSES,
)
def admin_create_subscription(
    body: OperatorSubscriptionRequest,
    services: ServicesDep,
    call: OperatorCall,
    account_id: AccountIdPath,
) -> Response:
    """Subscribe an account to any plan, enterprise included, charged to its default card
    (or the card given)."""
    return respond(
        subscriptions.operator_start(services, call=call, account_id=account_id, body=body)
    )


@admin_router.get(
    "/accounts/{account_id}/subscriptions", response_model=Envelope[AccountSubscriptionsOut]
)
def admin_list_subscriptions(services: ServicesDep, account_id: AccountIdPath) -> Response:
    return ok(subscriptions.operator_list(services, account_id=account_id))
