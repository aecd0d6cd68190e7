"""Payment use cases: the processor configuration for client-side tokenization, saved cards
(attach, make default, remove, list), setup intents, one payment's recorded status, and
the operator's listing of payment attempts.

Attaching a new card and removing one call the processor between transactions (phased);
making a card the default is atomic.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account
from billfold.money import from_micros
from billfold.payments import service
from billfold.payments.models import AttemptState, PaymentAttempt
from billfold.payments.schemas import (
    AttachPaymentMethodRequest,
    PaymentAttemptList,
    PaymentAttemptOut,
    PaymentMethodList,
    PaymentMethodOut,
    PaymentOut,
    RemovedPaymentMethodOut,
    SetupIntentOut,
    StripeConfigOut,
)
from billfold.processors.base import UnknownPaymentMethod
from billfold.services import Services


def tokenization_base(app: Services, *, base_url: str) -> str:
    """Where cards are tokenized: the processor's API (Stripe's), or for the sandbox its
    Stripe-compatible API under the configured public URL, else under `base_url` (where the
    front end was reached)."""
    if app.processor.api_base is not None:
        return app.processor.api_base.rstrip("/")
    return (app.settings.public_url or base_url).rstrip("/") + "/sandbox"


def _card(pm: service.PaymentMethod) -> PaymentMethodOut:
    return PaymentMethodOut.model_validate(service.payment_method_view(pm))


# --- reads ---------------------------------------------------------------------------


def stripe_config(app: Services, *, base_url: str) -> StripeConfigOut:
    """The publishable key and the tokenization API base for client-side card tokenization."""
    base = tokenization_base(app, base_url=base_url)
    return StripeConfigOut(
        publishable_key=app.processor.publishable_key,
        api_base=base,
        processor=app.processor.name,
        instructions=(
            f"Create a card PaymentMethod with POST {base}/v1/payment_methods, HTTP basic auth "
            "with the publishable key as user and an empty password, and Stripe's form fields "
            "(type=card, card[number], card[exp_month], card[exp_year], card[cvc]). Pass the "
            "returned pm_… id as payment_method_id to /wallet/fund or /billing/payment-methods. "
            "Card numbers never reach Billfold's API."
        ),
    )


def payment_methods(app: Services, *, account_id: str) -> PaymentMethodList:
    """The account's saved cards, newest first, and which one is the default."""
    with app.database.read() as session:
        items = [_card(pm) for pm in service.list_payment_methods(session, account_id)]
    default = next((pm.id for pm in items if pm.is_default), None)
    return PaymentMethodList(items=items, default_payment_method_id=default)


def payment_status(app: Services, *, account_id: str, payment_intent_id: str) -> PaymentOut:
    """The recorded status of one card payment of this account."""
    with app.database.read() as session:
        payment = service.get_payment(
            session, account_id=account_id, payment_intent_id=payment_intent_id
        )
        return PaymentOut.model_validate(service.payment_view(payment))


# --- writes --------------------------------------------------------------------------


def add_payment_method(
    app: Services, *, call: Call, account_id: str, body: AttachPaymentMethodRequest
) -> Reply:
    """Attach a tokenized card (pm_…) to the account, by default as the default card: 201
    when it is new here, 200 when the account already had it."""

    def handler() -> Outcome:
        database, processor = app.database, app.processor
        with database.read() as session:
            existing = session.get(service.PaymentMethod, body.payment_method_id)
            if existing is not None and existing.account_id != account_id:
                raise service.payment_method_not_found(body.payment_method_id)
        if existing is None:
            customer_id = service.ensure_customer(database, processor, account_id)
            service.processor_card(
                processor, payment_method_id=body.payment_method_id, customer_id=customer_id
            )
            card = service.attach_card(
                processor, payment_method_id=body.payment_method_id, customer_id=customer_id
            )
            with database.transaction() as session:
                pm = service.save_card(
                    session, account_id=account_id, card=card, make_default=body.make_default
                )
                return 201, _card(pm)
        with database.transaction() as session:
            if body.make_default:
                pm = service.set_default(
                    session, account_id=account_id, pm_id=body.payment_method_id
                )
            else:
                pm = service.owned_payment_method(session, account_id, body.payment_method_id)
            return 200, _card(pm)

    return for_account(app, call, account_id).phased(handler)


def set_default_payment_method(
    app: Services, *, call: Call, account_id: str, payment_method_id: str
) -> Reply:
    """Make a saved card the default."""

    def handler(session: Session) -> Outcome:
        pm = service.set_default(session, account_id=account_id, pm_id=payment_method_id)
        return 200, _card(pm)

    return for_account(app, call, account_id).atomic(handler)


def remove_payment_method(
    app: Services, *, call: Call, account_id: str, payment_method_id: str
) -> Reply:
    """Remove a saved card. If it was the default, the newest remaining card becomes default;
    then the card is detached at the processor (already gone there: nothing to do)."""

    def handler() -> Outcome:
        with app.database.transaction() as session:
            pm = service.remove_payment_method(
                session,
                account_id=account_id,
                pm_id=payment_method_id,
                refuse_while_charging=True,
            )
            removed = RemovedPaymentMethodOut.model_validate(
                {**service.payment_method_view(pm), "deleted": True}
            )
        with suppress(UnknownPaymentMethod):
            app.processor.detach_payment_method(payment_method_id)
        return 200, removed

    return for_account(app, call, account_id).phased(handler)


def create_setup_intent(app: Services, *, call: Call, account_id: str, base_url: str) -> Reply:
    """Start saving a card without charging it: the client confirms the intent at the
    processor, then attaches the card it returns."""

    def handler() -> Outcome:
        customer_id = service.ensure_customer(app.database, app.processor, account_id)
        intent = app.processor.create_setup_intent(customer_id=customer_id)
        base = tokenization_base(app, base_url=base_url)
        return 201, SetupIntentOut(
            setup_intent_id=intent.id,
            client_secret=intent.client_secret,
            status=intent.status,
            instructions=(
                f"Confirm with POST {base}/v1/setup_intents/{intent.id}/confirm (basic auth: the "
                "publishable key) with client_secret, and payment_method_data[type]=card plus "
                "payment_method_data[card][number|exp_month|exp_year|cvc] (or payment_method="
                "pm_… of a card tokenized for this account); then attach the returned "
                "payment_method with POST /billing/payment-methods."
            ),
        )

    return for_account(app, call, account_id).phased(handler)


# --- operator reads ------------------------------------------------------------------


def _attempt_view(row: PaymentAttempt) -> dict[str, Any]:
    return {
        "id": row.id,
        "account_id": row.account_id,
        "purpose": row.purpose,
        "state": row.state,
        "amount": from_micros(row.amount_micros),
        "currency": row.currency,
        "payment_method_id": row.payment_method_id,
        "payment_id": row.payment_id,
        "failure_reason": row.failure_reason,
        "failure_message": row.failure_message,
        "settled_by": row.settled_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "settled_at": row.settled_at,
    }


def payment_attempts(
    app: Services,
    *,
    state: AttemptState | None = None,
    account_id: str | None = None,
    limit: int = 50,
) -> PaymentAttemptList:
    """Payment attempts, newest first: with `state=unknown`, the card charges whose outcome
    the processor could not tell yet (the janitor settles them; nothing is credited until
    then)."""
    query = select(PaymentAttempt)
    if state is not None:
        query = query.where(PaymentAttempt.state == AttemptState(state).value)
    if account_id is not None:
        query = query.where(PaymentAttempt.account_id == account_id)
    query = query.order_by(PaymentAttempt.created_at.desc(), PaymentAttempt.id.desc())
    with app.database.read() as session:
        rows = list(session.scalars(query.limit(limit + 1)))
        return PaymentAttemptList(
            items=[PaymentAttemptOut.model_validate(_attempt_view(r)) for r in rows[:limit]],
            limit=limit,
            has_more=len(rows) > limit,
        )
