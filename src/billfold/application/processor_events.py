"""Inbound Stripe webhooks (`POST /webhooks/stripe`): verified, processed once, and settled
through the same machinery as every other path to the same outcome.

An event is only news: its signature is verified with the SDK (5 minutes' tolerance),
then what it names is asked of Stripe again where money depends on it (a Checkout
Session's payment, a PaymentIntent's outcome, a charge's refunds), and recorded by the
same functions the requests and the janitor use, so a webhook racing a confirm-checkout
or a request records one credit. Each event id is stored once processed; a replay is
answered 200 and does nothing. Events for objects Billfold does not know are ignored.

- `checkout.session.completed` / `.async_payment_succeeded`: the payment link is recorded
  paid (the wallet credited, or the subscription started), exactly once.
- `payment_intent.succeeded` / `.payment_failed`: an attempt left open (the request died,
  or timed out) is settled from what Stripe says, as the janitor would.
- `charge.refunded`: refunds made in Stripe's dashboard are recorded (ledger, credit note).
- `charge.dispute.created`: the dispute is recorded, the payment's credit stops being
  withdrawable, and `payment.disputed` goes out.
- `payment_method.detached`, `customer.deleted`: saved cards follow Stripe's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import stripe
from sqlalchemy import select, update

from billfold.accounts.models import Account
from billfold.checkout import service as checkout
from billfold.db import insert_or_ignore
from billfold.errors import BillfoldError, ErrorCode, NotFound, ProcessorError
from billfold.money import cents_to_micros
from billfold.payments import disputes, janitor
from billfold.payments import service as payments
from billfold.payments.models import (
    OPEN_STATES,
    Payment,
    PaymentAttempt,
    PaymentMethod,
    ProcessorEvent,
)
from billfold.processors.stripe import KEY_FIELD, StripeProcessor, key_hash
from billfold.schemas import ResponseModel
from billfold.services import Services
from billfold.wallet import refunds

log = logging.getLogger("billfold.stripe")


class InvalidWebhookSignature(BillfoldError):
    code = ErrorCode.WEBHOOK_SIGNATURE_INVALID


class ReceivedEventOut(ResponseModel):
    """What became of a Stripe webhook: processed, replayed (seen before) or ignored."""

    event_id: str
    type: str
    outcome: str


def receive_stripe_event(
    app: Services, *, payload: bytes, signature: str | None
) -> ReceivedEventOut:
    """Verify and process one Stripe webhook."""
    processor = app.processor
    if not isinstance(processor, StripeProcessor):
        raise NotFound("Stripe webhooks are received only with the Stripe processor.")
    try:
        event = processor.construct_event(payload, signature).to_dict()
    except (stripe.SignatureVerificationError, ValueError) as exc:
        raise InvalidWebhookSignature(
            "The Stripe-Signature header does not verify for this body.",
        ) from exc
    event_id, event_type = str(event["id"]), str(event["type"])
    with app.database.read() as session:
        if session.get(ProcessorEvent, event_id) is not None:
            return ReceivedEventOut(event_id=event_id, type=event_type, outcome="replayed")
    handler = HANDLERS.get(event_type)
    obj: dict[str, Any] = event.get("data", {}).get("object") or {}
    if handler is not None:
        try:
            handler(app, processor, obj)
        except stripe.StripeError as exc:  # Stripe will send it again
            raise ProcessorError(f"Stripe could not be asked about {event_type}.") from exc
    with app.database.transaction() as session:
        insert_or_ignore(session, ProcessorEvent, {"id": event_id, "type": event_type}, ["id"])
    outcome = "processed" if handler is not None else "ignored"
    return ReceivedEventOut(event_id=event_id, type=event_type, outcome=outcome)


def _checkout_completed(app: Services, processor: StripeProcessor, obj: dict[str, Any]) -> None:
    checkout.sync_hosted(app.database, processor, processor_checkout_id=str(obj["id"]))


def _payment_intent_settled(app: Services, processor: StripeProcessor, obj: dict[str, Any]) -> None:
    wanted = (obj.get("metadata") or {}).get(KEY_FIELD)
    customer = obj.get("customer")
    if not wanted or not customer:
        return
    with app.database.read() as session:
        open_attempts = session.execute(
            select(PaymentAttempt.id, PaymentAttempt.key)
            .join(Account, Account.id == PaymentAttempt.account_id)
            .where(
                Account.processor_customer_id == customer,
                PaymentAttempt.state.in_(OPEN_STATES),
            )
        ).all()
    for attempt_id, key in open_attempts:
        if key_hash(key) == wanted:
            janitor.settle(app, attempt_id, found_only=True)


def _charge_refunded(app: Services, processor: StripeProcessor, obj: dict[str, Any]) -> None:
    intent = obj.get("payment_intent")
    if not isinstance(intent, str):
        return
    with app.database.read() as session:
        if session.get(Payment, intent) is None:
            return
    for refund_id, cents in processor.refunds_made_elsewhere(intent):
        with app.database.transaction() as session:
            refunds.record_processor_refund(
                session,
                payment_intent_id=intent,
                processor_refund_id=refund_id,
                amount_micros=cents_to_micros(cents),
            )


def _dispute_created(app: Services, processor: StripeProcessor, obj: dict[str, Any]) -> None:
    intent = obj.get("payment_intent")
    if not isinstance(intent, str):
        return
    with app.database.transaction() as session:
        disputes.record_dispute(
            session,
            dispute_id=str(obj["id"]),
            payment_intent_id=intent,
            amount_micros=cents_to_micros(int(obj.get("amount") or 0)),
            reason=str(obj.get("reason") or "general"),
            status=str(obj.get("status") or "needs_response"),
        )


def _payment_method_detached(
    app: Services, processor: StripeProcessor, obj: dict[str, Any]
) -> None:
    with app.database.transaction() as session:
        pm = session.get(PaymentMethod, str(obj["id"]))
        if pm is not None:
            payments.remove_payment_method(session, account_id=pm.account_id, pm_id=pm.id)


def _customer_deleted(app: Services, processor: StripeProcessor, obj: dict[str, Any]) -> None:
    with app.database.transaction() as session:
        account = session.scalars(
            select(Account).where(Account.processor_customer_id == str(obj["id"]))
        ).first()
        if account is None:
            return
        for pm in payments.list_payment_methods(session, account.id):
            payments.remove_payment_method(session, account_id=account.id, pm_id=pm.id)
        session.execute(
            update(Account).where(Account.id == account.id).values(processor_customer_id=None)
        )


HANDLERS: dict[str, Callable[[Services, StripeProcessor, dict[str, Any]], None]] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "checkout.session.expired": _checkout_completed,  # paid meanwhile? (else nothing)
    "payment_intent.succeeded": _payment_intent_settled,
    "payment_intent.payment_failed": _payment_intent_settled,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
    "payment_method.detached": _payment_method_detached,
    "customer.deleted": _customer_deleted,
}
