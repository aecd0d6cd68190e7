"""Payment-link use cases: create a link a human pays on the hosted page (`fund`: an amount
for the wallet; `subscribe`: a plan's first period), and confirm a paid `fund` link.

Confirming a `subscribe` link is `subscriptions.confirm_checkout`.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account
from billfold.application.usecases.subscriptions import subscribe_link
from billfold.checkout import service
from billfold.checkout.schemas import (
    ConfirmCheckoutRequest,
    ConfirmedCheckoutOut,
    FundLinkOut,
    PaymentLinkRequest,
)
from billfold.money import from_micros, to_micros
from billfold.services import Services


def create_payment_link(
    app: Services, *, call: Call, account_id: str, body: PaymentLinkRequest, base_url: str
) -> Reply:
    """A hosted payment page for a human: forward payment_url, then confirm with session_id.
    `fund` answers a `FundLinkOut`, `subscribe` a `SubscribeLinkOut`; 201 either way. The
    link points at the configured public URL, else at `base_url`."""
    runner = for_account(app, call, account_id)
    if body.purpose == "subscribe":
        assert body.plan_id is not None
        plan_id = body.plan_id

        def subscribe_handler(session: Session) -> Outcome:
            return 201, subscribe_link(
                app, session, account_id=account_id, plan_id=plan_id, base_url=base_url
            )

        return runner.atomic(subscribe_handler)
    assert body.amount is not None
    amount_micros = to_micros(body.amount)
    base = (app.settings.public_url or base_url).rstrip("/")

    def handler(session: Session) -> Outcome:
        link = service.create(
            session,
            account_id=account_id,
            purpose=body.purpose,
            amount_micros=amount_micros,
            ttl=timedelta(minutes=app.settings.payment_link_ttl_minutes),
        )
        return 201, FundLinkOut(
            payment_url=f"{base}/pay/{link.id}",
            session_id=link.id,
            purpose="fund",
            amount=from_micros(link.amount_micros),
            currency=link.currency,
            expires_at=link.expires_at,
            instructions=(
                "Send payment_url to the human who pays. After paying they see a success "
                "page with the session_id; then call POST /wallet/confirm-checkout with "
                '{"session_id": "' + link.id + '"}. Until they have paid it answers '
                "409 checkout_not_completed; after expires_at, 410 checkout_expired."
            ),
        )

    return runner.atomic(handler)


def confirm_wallet_checkout(
    app: Services, *, account_id: str, body: ConfirmCheckoutRequest
) -> ConfirmedCheckoutOut:
    """The wallet was credited when the human paid; this reports it, the same every time
    (the balance right after that credit). 409 checkout_not_completed until then, 410 once
    the link expired unpaid."""
    with app.database.read() as session:
        link = service.confirm(
            session, account_id=account_id, session_id=body.session_id, purpose="fund"
        )
        return ConfirmedCheckoutOut(
            session_id=link.id,
            status="complete",
            purpose=link.purpose,
            amount=from_micros(link.amount_micros),
            currency=link.currency,
            payment_intent_id=link.payment_intent_id,
            balance=from_micros(service.balance_after_credit(session, link)),
            completed_at=link.completed_at,
        )
