"""Agent endpoints for the processor configuration, saved cards and payment status."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from billfold.api.deps import Agent, AgentCall, ServicesDep, respond
from billfold.api.responses import ApiResponse, ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import payments
from billfold.payments.schemas import (
    AttachPaymentMethodRequest,
    PaymentMethodList,
    PaymentMethodOut,
    PaymentOut,
    RemovedPaymentMethodOut,
    SetupIntentOut,
    StripeConfigOut,
)
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["billing"], responses=ERROR_RESPONSES)

PaymentMethodPath = Path(min_length=1, max_length=64)


@router.get("/billing/stripe-config", response_model=Envelope[StripeConfigOut])
def stripe_config(agent: Agent, services: ServicesDep, request: Request) -> Response:
    """The publishable key and the tokenization API base for client-side card tokenization."""
    data = payments.stripe_config(services, base_url=str(request.base_url))
    # One reference snippet reads publishable_key at the top level.
    return ApiResponse({"data": data.model_dump(), "publishable_key": data.publishable_key})


@router.get("/billing/payment-methods", response_model=Envelope[PaymentMethodList])
def list_payment_methods(agent: Agent, services: ServicesDep) -> Response:
    return ok(payments.payment_methods(services, account_id=agent.account_id))


@router.post("/billing/payment-methods", response_model=Envelope[PaymentMethodOut], status_code=201)
def add_payment_method(
    body: AttachPaymentMethodRequest, agent: Agent, services: ServicesDep, call: AgentCall
) -> Response:
    """Attach a tokenized card (pm_…) to the account, by default as the default card."""
    return respond(
        payments.add_payment_method(services, call=call, account_id=agent.account_id, body=body)
    )


@router.put(
    "/billing/payment-methods/{payment_method_id}/default",
    response_model=Envelope[PaymentMethodOut],
)
def set_default_payment_method(
    agent: Agent,
    services: ServicesDep,
    call: AgentCall,
    payment_method_id: str = PaymentMethodPath,
) -> Response:
    return respond(
        payments.set_default_payment_method(
            services, call=call, account_id=agent.account_id, payment_method_id=payment_method_id
        )
    )


@router.delete(
    "/billing/payment-methods/{payment_method_id}",
    response_model=Envelope[RemovedPaymentMethodOut],
)
def remove_payment_method(
    agent: Agent,
    services: ServicesDep,
    call: AgentCall,
    payment_method_id: str = PaymentMethodPath,
) -> Response:
    """Remove a saved card. If it was the default, the newest remaining card becomes default."""
    return respond(
        payments.remove_payment_method(
            services, call=call, account_id=agent.account_id, payment_method_id=payment_method_id
        )
    )


@router.get("/payments/{payment_intent_id}/status", response_model=Envelope[PaymentOut])
def payment_status(
    agent: Agent, services: ServicesDep, payment_intent_id: str = Path(max_length=64)
) -> Response:
    """The recorded status of one card payment of this account."""
    return ok(
        payments.payment_status(
            services, account_id=agent.account_id, payment_intent_id=payment_intent_id
        )
    )


@router.post("/billing/setup-intent", response_model=Envelope[SetupIntentOut], status_code=201)
def create_setup_intent(
    agent: Agent, services: ServicesDep, request: Request, call: AgentCall
) -> Response:
    """Start saving a card without charging it: confirm the intent at the processor."""
    return respond(
        payments.create_setup_intent(
            services, call=call, account_id=agent.account_id, base_url=str(request.base_url)
        )
    )
