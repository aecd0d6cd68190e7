"""Payment-link use cases: create a link a human pays on the hosted page (`fund`: an amount
for the wallet; `subscribe`: a plan's first period), and confirm a paid `fund` link; the
hosted page's own: read a link, and pay it with a card (counted per client address and per
link).

Confirming a `subscribe` link is `subscriptions.confirm_checkout`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy.orm import Session

from billfold import ratelimit
from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account
from billfold.application.usecases.subscriptions import subscribe_link
from billfold.checkout import service
from billfold.checkout.models import CheckoutSession
from billfold.checkout.schemas import (
    ConfirmCheckoutRequest,
    ConfirmedCheckoutOut,
    FundLinkOut,
    PaymentLinkRequest,
)
from billfold.errors import RateLimited
from billfold.money import from_micros, to_micros
from billfold.services import Services
from billfold.subscriptions.models import Plan


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
    the link expired unpaid. A link paid on the processor's page is recorded first, if the
    processor says it was paid."""
    service.sync_hosted(
        app.database, app.processor, session_id=body.session_id, account_id=account_id
    )
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


@dataclass(frozen=True)
class HostedLink:
    """A payment link as its hosted page shows it: the link, its plan (`subscribe`), and
    where the human pays it when the processor hosts the payment page (Stripe Checkout)."""

    checkout: CheckoutSession
    plan: Plan | None
    pay_at: str | None = None

    @property
    def status(self) -> str:
        """open, processing, complete or expired (on the time the caller runs on)."""
        return service.effective_status(self.checkout)


@dataclass(frozen=True)
class HostedPayment:
    """What came of a card payment on the hosted page. `link` is the link as it is now
    (None: no such link); `result` is None when nothing was tried: no such link, or over
    the attempt limits (`retry_after`: seconds, as the Retry-After header says them)."""

    link: HostedLink | None
    result: service.PayResult | None = None
    retry_after: str | None = None


def open_hosted_link(app: Services, *, session_id: str, base_url: str) -> HostedLink | None:
    """The payment link behind its page, as a human opening it finds it: paid on the
    processor's page (recorded now if the processor says so), or where to pay it there
    (`pay_at`); None: no such link. The processor's page sends the human back to the link's
    page under the configured public URL, else under `base_url`."""
    base = (app.settings.public_url or base_url).rstrip("/")
    service.sync_hosted(app.database, app.processor, session_id=session_id)
    pay_at = service.hosted_checkout_url(
        app.database, app.processor, session_id=session_id, base_url=base
    )
    link = hosted_link(app, session_id=session_id)
    return replace(link, pay_at=pay_at) if link is not None else None


def hosted_link(app: Services, *, session_id: str) -> HostedLink | None:
    """The payment link behind a hosted page (None: no such link)."""
    with app.database.read() as session:
        checkout = session.get(CheckoutSession, session_id)
        if checkout is None:
            return None
        plan = session.get(Plan, checkout.plan_id) if checkout.plan_id else None
        return HostedLink(checkout, plan)


def _count_payment_attempt(app: Services, link: HostedLink | None, client: str) -> str | None:
    """Count a payment attempt per client address and per payment link (each one tokenizes
    a card and may charge it); the seconds to wait when over a limit."""
    settings = app.settings
    limits = [
        ratelimit.Limit(
            f"pay:client:{client}",
            settings.pay_max_attempts_per_client,
            settings.client_window_seconds,
        )
    ]
    if link is not None:  # unknown links cost no counter of their own
        limits.append(
            ratelimit.Limit(
                f"pay:session:{link.checkout.id}",
                settings.pay_max_attempts_per_session,
                settings.pay_session_window_seconds,
            )
        )
    try:
        with app.database.transaction() as session:
            ratelimit.take(session, limits, message="Too many payment attempts.")
    except RateLimited as exc:
        return exc.headers["Retry-After"]
    return None


def pay_hosted_link(
    app: Services,
    *,
    session_id: str,
    number: str,
    exp_month: str,
    exp_year: str,
    cvc: str,
    client: str,
) -> HostedPayment:
    """Pay a link with a card on its hosted page (sandbox): counted first (`client`: where
    the attempt comes from), then tokenized and charged; a `subscribe` link starts its
    subscription when paid."""
    link = hosted_link(app, session_id=session_id)
    retry_after = _count_payment_attempt(app, link, client)
    if retry_after is not None:
        return HostedPayment(link, retry_after=retry_after)
    if link is None:
        return HostedPayment(None)
    result = service.pay_with_card(
        app.database,
        app.sandbox,
        session_id=session_id,
        number=number,
        exp_month=exp_month,
        exp_year=exp_year,
        cvc=cvc,
    )
    return HostedPayment(hosted_link(app, session_id=session_id), result)
