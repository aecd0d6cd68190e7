"""Agent endpoints for payment links: create one, then confirm the human paid it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billfold.api.deps import Agent, AgentCall, ServicesDep, respond
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import checkout
from billfold.checkout.schemas import (
    ConfirmCheckoutRequest,
    ConfirmedCheckoutOut,
    PaymentLinkOut,
    PaymentLinkRequest,
)
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["checkout"], responses=ERROR_RESPONSES)


@router.post("/billing/payment-link", response_model=Envelope[PaymentLinkOut], status_code=201)
def create_payment_link(
    body: PaymentLinkRequest,
    agent: Agent,
    services: ServicesDep,
    request: Request,
    call: AgentCall,
) -> Response:
    """A hosted payment page for a human: forward payment_url, then confirm with session_id."""
    return respond(
        checkout.create_payment_link(
            services,
            call=call,
            account_id=agent.account_id,
            body=body,
            base_url=str(request.base_url),
        )
    )


@router.post("/wallet/confirm-checkout", response_model=Envelope[ConfirmedCheckoutOut])
def confirm_wallet_checkout(
    body: ConfirmCheckoutRequest, agent: Agent, services: ServicesDep
) -> Response:
    """The wallet was credited when the human paid; this reports it, the same every time."""
    return ok(checkout.confirm_wallet_checkout(services, account_id=agent.account_id, body=body))
