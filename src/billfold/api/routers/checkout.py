"""Agent endpoints for payment links: create one, then confirm the human paid it."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.api.deps import Agent, AgentIdempotent, Outcome, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.checkout import service
from billfold.checkout.models import CheckoutSession
from billfold.checkout.schemas import (
    ConfirmCheckoutRequest,
    ConfirmedCheckoutOut,
    PaymentLinkOut,
    PaymentLinkRequest,
)
from billfold.ledger.models import LedgerTransaction
from billfold.money import from_micros, to_micros
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=DecimalJSONRoute, tags=["checkout"], responses=ERROR_RESPONSES)


def public_base(services: ServicesDep, request: Request) -> str:
    return (services.settings.public_url or str(request.base_url)).rstrip("/")


@router.post("/billing/payment-link", response_model=Envelope[PaymentLinkOut], status_code=201)
def create_payment_link(
    body: PaymentLinkRequest,
    agent: Agent,
    services: ServicesDep,
    request: Request,
    idem: AgentIdempotent,
) -> Response:
    """A hosted payment page for a human: forward payment_url, then confirm with session_id."""
    ttl = timedelta(minutes=services.settings.payment_link_ttl_minutes)
    base = public_base(services, request)
    if body.purpose == "subscribe":
        assert body.plan_id is not None
        plan_id = body.plan_id

        def subscribe_handler(session: Session) -> Outcome:
            return 201, subscribe_link(
                session, account_id=agent.account_id, plan_id=plan_id, ttl=ttl, base=base
            )

        return idem.atomic(subscribe_handler)
    assert body.amount is not None

    def handler(session: Session) -> Outcome:
        checkout = service.create(
            session,
            account_id=agent.account_id,
            purpose=body.purpose,
            amount_micros=to_micros(body.amount),  # type: ignore[arg-type]
            ttl=ttl,
        )
        return 201, {
            "payment_url": f"{base}/pay/{checkout.id}",
            "session_id": checkout.id,
            "purpose": checkout.purpose,
            "amount": from_micros(checkout.amount_micros),
            "currency": checkout.currency,
            "expires_at": checkout.expires_at,
            "instructions": (
                "Send payment_url to the human who pays. After paying they see a success "
                "page with the session_id; then call POST /wallet/confirm-checkout with "
                '{"session_id": "' + checkout.id + '"}. Until they have paid it answers '
                "409 checkout_not_completed; after expires_at, 410 checkout_expired."
            ),
        }

    return idem.atomic(handler)


def subscribe_link(
    session: Session,
    *,
    account_id: str,
    plan_id: int,
    ttl: timedelta,
    base: str,
    success_url: str | None = None,
) -> dict[str, object]:
    """A `subscribe` payment link: the plan's first period, paid by a human."""
    from billfold.subscriptions.start import payable_plan  # subscriptions build on this

    plan = payable_plan(session, account_id=account_id, plan_id=plan_id)
    checkout = service.create(
        session,
        account_id=account_id,
        purpose="subscribe",
        amount_micros=plan.price_micros,
        ttl=ttl,
        plan_id=plan.id,
        success_url=success_url,
    )
    url = f"{base}/pay/{checkout.id}"
    return {
        "payment_url": url,
        "checkout_url": url,
        "session_id": checkout.id,
        "purpose": checkout.purpose,
        "plan_id": plan.id,
        "amount": from_micros(checkout.amount_micros),
        "currency": checkout.currency,
        "expires_at": checkout.expires_at,
        "instructions": (
            "Send payment_url to the human who pays. After paying they see a success "
            "page with the session_id; then call POST /subscriptions/confirm-checkout with "
            '{"session_id": "' + checkout.id + '"}. Until they have paid it answers '
            "409 checkout_not_completed; after expires_at, 410 checkout_expired."
        ),
    }


def confirmed_view(checkout: CheckoutSession, balance_micros: int) -> dict[str, object]:
    return {
        "session_id": checkout.id,
        "status": "complete",
        "purpose": checkout.purpose,
        "amount": from_micros(checkout.amount_micros),
        "currency": checkout.currency,
        "payment_intent_id": checkout.payment_intent_id,
        "balance": from_micros(balance_micros),
        "completed_at": checkout.completed_at,
    }


@router.post("/wallet/confirm-checkout", response_model=Envelope[ConfirmedCheckoutOut])
def confirm_wallet_checkout(
    body: ConfirmCheckoutRequest, agent: Agent, services: ServicesDep
) -> Response:
    """The wallet was credited when the human paid; this reports it, the same every time."""
    with services.database.read() as session:
        checkout = service.confirm(
            session, account_id=agent.account_id, session_id=body.session_id, purpose="fund"
        )
        credit = session.scalars(
            select(LedgerTransaction).where(
                LedgerTransaction.account_id == agent.account_id,
                LedgerTransaction.reference == f"payment:{checkout.payment_intent_id}",
            )
        ).one()
        # The balance right after this credit, so every confirm answers the same.
        return ok(confirmed_view(checkout, credit.balance_after_micros))
