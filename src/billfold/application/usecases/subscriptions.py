"""Subscription use cases: starting one (charged now, or through a payment link a human
pays), reading them, changing the plan, a new cycle, pause, resume, cancel, paying a failed
payment again, a one-off charge; and the operator's subscriptions of an account.

A change that charges a card is phased (the processor is called between transactions); the
others are atomic. A declined charge is the 402 whose data holds the subscription.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session

from billfold.accounts.service import get_account
from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account, for_operator
from billfold.application.usecases.wallet import fund_by_card
from billfold.checkout import service as checkout
from billfold.errors import Conflict, ErrorCode
from billfold.money import from_micros, to_micros
from billfold.services import Services
from billfold.subscriptions import changes, plans, views
from billfold.subscriptions import start as starting
from billfold.subscriptions.models import Subscription
from billfold.subscriptions.schemas import (
    AccountSubscriptionsOut,
    CancelRequest,
    ChangePlanRequest,
    ChargeAmountOut,
    ChargeAmountRequest,
    ConfirmedSubscriptionOut,
    ConfirmSubscriptionCheckoutRequest,
    CreateSubscriptionRequest,
    OperatorSubscriptionRequest,
    SubscribeLinkOut,
    SubscriptionListOut,
    SubscriptionOut,
)
from billfold.subscriptions.states import SubscriptionStatus

# The subscriptions an agent's list calls `active` (a live one whose first payment is done).
ACTIVE_VIEW = (
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.PAST_DUE,
    SubscriptionStatus.PAUSED,
    SubscriptionStatus.UNPAID,
)


def _out(session: Session, sub: Subscription) -> SubscriptionOut:
    return SubscriptionOut.model_validate(views.view(session, sub))


# --- reads ---------------------------------------------------------------------------


def list_for_account(app: Services, *, account_id: str) -> SubscriptionListOut:
    """The account's subscriptions of every kind (normal, addon, enterprise), newest first,
    and those of them that are active."""
    with app.database.read() as session:
        subs = views.list_for_account(session, account_id, live_only=False)
        items = [_out(session, s) for s in subs]
    return SubscriptionListOut(items=items, active=[i for i in items if i.status in ACTIVE_VIEW])


def get(app: Services, *, account_id: str, subscription_id: str) -> SubscriptionOut:
    """Status, plan, current period, scheduled change, latest invoice and its payment,
    next retry time."""
    with app.database.read() as session:
        sub = views.get_for_account(session, account_id=account_id, subscription_id=subscription_id)
        return _out(session, sub)


def confirm_checkout(
    app: Services, *, account_id: str, body: ConfirmSubscriptionCheckoutRequest
) -> ConfirmedSubscriptionOut:
    """The subscription started when the human paid; this reports it, the same every time.
    409 checkout_not_completed until then, 410 once the link expired unpaid. A link paid
    on the processor's page is recorded first, if the processor says it was paid."""
    checkout.sync_hosted(
        app.database, app.processor, session_id=body.session_id, account_id=account_id
    )
    with app.database.read() as session:
        session_row = checkout.confirm(
            session, account_id=account_id, session_id=body.session_id, purpose="subscribe"
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
            session, account_id=account_id, subscription_id=session_row.subscription_id
        )
        return ConfirmedSubscriptionOut.model_validate(
            {**views.view(session, sub), "session_id": session_row.id}
        )


# --- writes --------------------------------------------------------------------------


def subscribe_link(
    app: Services,
    session: Session,
    *,
    account_id: str,
    plan_id: int,
    base_url: str,
    success_url: str | None = None,
) -> SubscribeLinkOut:
    """A `subscribe` payment link: the plan's first period, paid by a human. The link points
    at the configured public URL, else at `base_url` (where the front end was reached).

    Not a use case of its own: it runs in the caller's transaction (`start` below; the
    payment-link route's `purpose: subscribe` answers the same link)."""
    plan = starting.payable_plan(session, account_id=account_id, plan_id=plan_id)
    link = checkout.create(
        session,
        account_id=account_id,
        purpose="subscribe",
        amount_micros=plan.price_micros,
        ttl=timedelta(minutes=app.settings.payment_link_ttl_minutes),
        plan_id=plan.id,
        success_url=success_url,
    )
    url = f"{(app.settings.public_url or base_url).rstrip('/')}/pay/{link.id}"
    return SubscribeLinkOut(
        payment_url=url,
        checkout_url=url,
        session_id=link.id,
        purpose="subscribe",
        plan_id=plan.id,
        amount=from_micros(link.amount_micros),
        currency=link.currency,
        expires_at=link.expires_at,
        instructions=(
            "Send payment_url to the human who pays. After paying they see a success "
            "page with the session_id; then call POST /subscriptions/confirm-checkout with "
            '{"session_id": "' + link.id + '"}. Until they have paid it answers '
            "409 checkout_not_completed; after expires_at, 410 checkout_expired."
        ),
    )


def start(
    app: Services, *, call: Call, account_id: str, body: CreateSubscriptionRequest, base_url: str
) -> Reply:
    """With payment_method_id: the first period is charged now (headless) and the answer is
    the subscription (`SubscriptionOut`). Without: a payment link for a human
    (`SubscribeLinkOut`); confirm with its session_id. 201 either way."""
    runner = for_account(app, call, account_id)
    if body.payment_method_id is None:
        success_url = str(body.success_url) if body.success_url else None

        def link_handler(session: Session) -> Outcome:
            return 201, subscribe_link(
                app,
                session,
                account_id=account_id,
                plan_id=body.plan_id,
                base_url=base_url,
                success_url=success_url,
            )

        return runner.atomic(link_handler)
    payment_method_id = body.payment_method_id

    def handler() -> Outcome:
        view = starting.start(
            app, account_id=account_id, plan_id=body.plan_id, payment_method_id=payment_method_id
        )
        return 201, SubscriptionOut.model_validate(view)

    return runner.phased(handler)


def charge_amount(
    app: Services, *, call: Call, account_id: str, body: ChargeAmountRequest
) -> Reply:
    """A one-off charge of $5 to $10,000 to the default card (or the card given), credited
    to the wallet as purchased credit and invoiced."""

    amount_micros = to_micros(body.amount)

    def handler() -> Outcome:
        funded = fund_by_card(
            app,
            account_id=account_id,
            amount_micros=amount_micros,
            payment_method_id=body.payment_method_id,
            idempotency_key=call.key,
            purpose="subscription_charge",
        )
        return 201, ChargeAmountOut(
            payment_intent_id=funded.payment.id,
            status=funded.payment.status,
            amount=from_micros(funded.payment.amount_micros),
            currency=funded.payment.currency,
            balance=from_micros(funded.wallet.balance_micros),
            transaction_id=funded.transaction_id,
        )

    return for_account(app, call, account_id).phased(handler)


def change_plan(
    app: Services, *, call: Call, account_id: str, subscription_id: str, body: ChangePlanRequest
) -> Reply:
    """Upgrade now with a prorated charge, or downgrade at the end of the period."""

    def handler() -> Outcome:
        view = changes.change_plan(
            app,
            account_id=account_id,
            subscription_id=subscription_id,
            new_plan_id=body.new_plan_id,
        )
        return 200, SubscriptionOut.model_validate(view)

    return for_account(app, call, account_id).phased(handler)


def _state_change(
    app: Services,
    call: Call,
    account_id: str,
    change: Callable[[Session], Subscription],
) -> Reply:
    """A change made in one transaction (no card involved), answered with the result."""

    def handler(session: Session) -> Outcome:
        return 200, _out(session, change(session))

    return for_account(app, call, account_id).atomic(handler)


def pause(app: Services, *, call: Call, account_id: str, subscription_id: str) -> Reply:
    """No renewals and no credit expiry while paused; the remaining time is kept."""
    return _state_change(
        app,
        call,
        account_id,
        lambda session: changes.pause(
            session, account_id=account_id, subscription_id=subscription_id
        ),
    )


def resume(app: Services, *, call: Call, account_id: str, subscription_id: str) -> Reply:
    """The kept time resumes: the period end moves by how long it was paused."""
    return _state_change(
        app,
        call,
        account_id,
        lambda session: changes.resume(
            session, account_id=account_id, subscription_id=subscription_id
        ),
    )


def cancel(
    app: Services, *, call: Call, account_id: str, subscription_id: str, body: CancelRequest
) -> Reply:
    """at_period_end (default true): renewals stop then. false: ends now and credits the
    unused time to the wallet."""
    return _state_change(
        app,
        call,
        account_id,
        lambda session: changes.cancel(
            session,
            account_id=account_id,
            subscription_id=subscription_id,
            at_period_end=body.at_period_end,
        ),
    )


def reset_cycle(app: Services, *, call: Call, account_id: str, subscription_id: str) -> Reply:
    """A new period starts now, charged in full less the unused part of the current one."""

    def handler() -> Outcome:
        view = changes.reset_cycle(app, account_id=account_id, subscription_id=subscription_id)
        return 200, SubscriptionOut.model_validate(view)

    return for_account(app, call, account_id).phased(handler)


def fix_payment(app: Services, *, call: Call, account_id: str, subscription_id: str) -> Reply:
    """Retry the failed payment now with the current default card."""

    def handler() -> Outcome:
        view = changes.fix_payment(app, account_id=account_id, subscription_id=subscription_id)
        return 200, SubscriptionOut.model_validate(view)

    return for_account(app, call, account_id).phased(handler)


# --- operator ------------------------------------------------------------------------


def operator_list(app: Services, *, account_id: str) -> AccountSubscriptionsOut:
    """An account's subscriptions of every kind, newest first."""
    with app.database.read() as session:
        get_account(session, account_id)
        subs = views.list_for_account(session, account_id, live_only=False)
        return AccountSubscriptionsOut(items=[_out(session, s) for s in subs])


def operator_start(
    app: Services, *, call: Call, account_id: str, body: OperatorSubscriptionRequest
) -> Reply:
    """Subscribe an account to any plan, enterprise included, charged to its default card
    (or the card given). An unknown account is a 404 before anything runs."""
    with app.database.read() as session:
        get_account(session, account_id)

    def handler() -> Outcome:
        view = starting.start(
            app,
            account_id=account_id,
            plan_id=body.plan_id,
            payment_method_id=body.payment_method_id,
            created_by="operator",
            kinds=plans.PLAN_KINDS,
        )
        return 201, SubscriptionOut.model_validate(view)

    return for_operator(app, call).phased(handler)
