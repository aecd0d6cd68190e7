"""Agent endpoints for the processor configuration, saved cards and payment status."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from billfold.api.deps import Agent, AgentIdempotent, Outcome, ServicesDep
from billfold.api.responses import ApiResponse, ok
from billfold.api.routing import DecimalJSONRoute
from billfold.payments import service
from billfold.payments.schemas import (
    AttachPaymentMethodRequest,
    PaymentMethodList,
    PaymentMethodOut,
    PaymentOut,
    SetupIntentOut,
    StripeConfigOut,
)
from billfold.processors.base import UnknownPaymentMethod
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["billing"], responses=ERROR_RESPONSES)

PaymentMethodPath = Path(min_length=1, max_length=64)


def api_base(services: Any, request: Request) -> str:
    """Where the Stripe-compatible tokenization API is served (the sandbox processor)."""
    public = services.settings.public_url or str(request.base_url)
    return public.rstrip("/") + "/sandbox"


@router.get("/billing/stripe-config", response_model=Envelope[StripeConfigOut])
def stripe_config(agent: Agent, services: ServicesDep, request: Request) -> Response:
    """The publishable key and the tokenization API base for client-side card tokenization."""
    base = api_base(services, request)
    data = StripeConfigOut(
        publishable_key=services.processor.publishable_key,
        api_base=base,
        processor=services.processor.name,
        instructions=(
            f"Create a card PaymentMethod with POST {base}/v1/payment_methods, HTTP basic auth "
            "with the publishable key as user and an empty password, and Stripe's form fields "
            "(type=card, card[number], card[exp_month], card[exp_year], card[cvc]). Pass the "
            "returned pm_… id as payment_method_id to /wallet/fund or /billing/payment-methods. "
            "Card numbers never reach Billfold's API."
        ),
    )
    # One reference snippet reads publishable_key at the top level.
    return ApiResponse({"data": data.model_dump(), "publishable_key": data.publishable_key})


def _list(session: Session, account_id: str) -> PaymentMethodList:
    items = [
        PaymentMethodOut(**service.payment_method_view(pm))
        for pm in service.list_payment_methods(session, account_id)
    ]
    default = next((pm.id for pm in items if pm.is_default), None)
    return PaymentMethodList(items=items, default_payment_method_id=default)


@router.get("/billing/payment-methods", response_model=Envelope[PaymentMethodList])
def list_payment_methods(agent: Agent, services: ServicesDep) -> Response:
    with services.database.read() as session:
        return ok(_list(session, agent.account_id))


@router.post("/billing/payment-methods", response_model=Envelope[PaymentMethodOut], status_code=201)
def add_payment_method(
    body: AttachPaymentMethodRequest, agent: Agent, services: ServicesDep, idem: AgentIdempotent
) -> Response:
    """Attach a tokenized card (pm_…) to the account, by default as the default card."""

    def handler() -> Outcome:
        database, processor = services.database, services.processor
        with database.read() as session:
            existing = session.get(service.PaymentMethod, body.payment_method_id)
            if existing is not None and existing.account_id != agent.account_id:
                raise service.payment_method_not_found(body.payment_method_id)
        if existing is None:
            customer_id = service.ensure_customer(database, processor, agent.account_id)
            service.processor_card(
                processor, payment_method_id=body.payment_method_id, customer_id=customer_id
            )
            card = service.attach_card(
                processor, payment_method_id=body.payment_method_id, customer_id=customer_id
            )
            with database.transaction() as session:
                pm = service.save_card(
                    session, account_id=agent.account_id, card=card, make_default=body.make_default
                )
                return 201, service.payment_method_view(pm)
        with database.transaction() as session:
            if body.make_default:
                pm = service.set_default(
                    session, account_id=agent.account_id, pm_id=body.payment_method_id
                )
            else:
                pm = service.owned_payment_method(session, agent.account_id, body.payment_method_id)
            return 200, service.payment_method_view(pm)

    return idem.phased(handler)


@router.put(
    "/billing/payment-methods/{payment_method_id}/default",
    response_model=Envelope[PaymentMethodOut],
)
def set_default_payment_method(
    agent: Agent,
    services: ServicesDep,
    idem: AgentIdempotent,
    payment_method_id: str = PaymentMethodPath,
) -> Response:
    def handler(session: Session) -> Outcome:
        pm = service.set_default(session, account_id=agent.account_id, pm_id=payment_method_id)
        return 200, service.payment_method_view(pm)

    return idem.atomic(handler)


@router.delete(
    "/billing/payment-methods/{payment_method_id}", response_model=Envelope[PaymentMethodOut]
)
def remove_payment_method(
    agent: Agent,
    services: ServicesDep,
    idem: AgentIdempotent,
    payment_method_id: str = PaymentMethodPath,
) -> Response:
    """Remove a saved card. If it was the default, the newest remaining card becomes default."""

    def handler() -> Outcome:
        with services.database.transaction() as session:
            pm = service.remove_payment_method(
                session, account_id=agent.account_id, pm_id=payment_method_id
            )
            view = {**service.payment_method_view(pm), "deleted": True}
        with suppress(UnknownPaymentMethod):  # already gone at the processor: nothing to do
            services.processor.detach_payment_method(payment_method_id)
        return 200, view

    return idem.phased(handler)


@router.get("/payments/{payment_intent_id}/status", response_model=Envelope[PaymentOut])
def payment_status(
    agent: Agent, services: ServicesDep, payment_intent_id: str = Path(max_length=64)
) -> Response:
    """The recorded status of one card payment of this account."""
    with services.database.read() as session:
        payment = service.get_payment(
            session, account_id=agent.account_id, payment_intent_id=payment_intent_id
        )
        return ok(service.payment_view(payment))


@router.post("/billing/setup-intent", response_model=Envelope[SetupIntentOut], status_code=201)
def create_setup_intent(
    agent: Agent, services: ServicesDep, request: Request, idem: AgentIdempotent
) -> Response:
    """Start saving a card without charging it: confirm the intent at the processor."""

    def handler() -> Outcome:
        customer_id = service.ensure_customer(
            services.database, services.processor, agent.account_id
        )
        intent = services.processor.create_setup_intent(customer_id=customer_id)
        base = api_base(services, request)
        return 201, {
            "setup_intent_id": intent.id,
            "client_secret": intent.client_secret,
            "status": intent.status,
            "instructions": (
                f"Confirm with POST {base}/v1/setup_intents/{intent.id}/confirm (basic auth: the "
                "publishable key) with client_secret, and payment_method_data[type]=card plus "
                "payment_method_data[card][number|exp_month|exp_year|cvc] (or payment_method="
                "pm_… of a card tokenized for this account); then attach the returned "
                "payment_method with POST /billing/payment-methods."
            ),
        }

    return idem.phased(handler)
