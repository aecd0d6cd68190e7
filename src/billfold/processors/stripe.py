"""The Stripe processor: card money through Stripe's API, on the official `stripe` SDK.

One `StripeClient` per process. Every mutating call carries a Stripe `Idempotency-Key`
derived from Billfold's own key for the operation (a payment attempt's key, a refund's
id), hashed so it always fits Stripe's 255 characters: a retry after a timeout, a crash
or a 5xx replays Stripe's first answer instead of charging again. The SDK retries
connection errors and 5xx under that same key; rate limits (429) are retried here with
backoff. What still fails raises, and the payment attempt stays `unknown` for the janitor,
which looks the charge up with `find_charge` (a list of the customer's PaymentIntents,
not the eventually consistent search, matched on the key's hash in their metadata).

Outcomes: a card error is a failed `ChargeResult` with Stripe's code, `decline_code` and
message; a charge that needs the cardholder (3-D Secure) is `requires_action`; an id
Stripe does not know is `UnknownPaymentMethod`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import stripe

from billfold.clock import as_utc, wall_now
from billfold.processors.base import (
    Card,
    CardError,
    ChargeRequest,
    ChargeResult,
    HostedCheckout,
    HostedCheckoutState,
    RefundResult,
    SetupIntent,
    UnknownPaymentMethod,
    charge_each,
)

log = logging.getLogger("billfold.stripe")

STRIPE_API_BASE = "https://api.stripe.com"
# Stripe Checkout sessions live between 30 minutes and 24 hours.
CHECKOUT_MIN_TTL = timedelta(minutes=30)
CHECKOUT_MAX_TTL = timedelta(hours=24)
# Backoff between tries after a 429 (the SDK itself does not retry rate limits).
RATE_LIMIT_BACKOFF = (0.5, 1.0, 2.0, 4.0)
# Metadata field holding the hash of Billfold's key on every PaymentIntent it creates.
KEY_FIELD = "billfold_key"

T = TypeVar("T")


def stripe_idempotency_key(kind: str, key: str) -> str:
    """The Stripe Idempotency-Key for Billfold's `key` of one kind of call: always the same
    for the same key, at most 255 characters whatever the key's length."""
    return f"billfold-{kind}-{key_hash(key)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def _is_missing(exc: stripe.StripeError) -> bool:
    """Stripe does not have the object (or will not show it to this key)."""
    return exc.http_status == 404 or _error_body(exc).get("code") == "resource_missing"


def _card(pm: Any) -> Card:
    card = pm["card"]
    customer = pm.get("customer")
    return Card(
        id=pm["id"],
        brand=str(card.get("brand") or "unknown"),
        last4=str(card["last4"]),
        exp_month=int(card["exp_month"]),
        exp_year=int(card["exp_year"]),
        fingerprint=str(card.get("fingerprint") or pm["id"]),
        customer_id=customer if isinstance(customer, str) else getattr(customer, "id", None),
    )


def intent_result(intent: Any) -> ChargeResult:
    """A PaymentIntent as Billfold records it. One still in flight (`processing`) raises:
    the attempt stays open until Stripe knows."""
    status = intent["status"]
    if status == "succeeded":
        return ChargeResult(payment_intent_id=intent["id"], status="succeeded")
    if status == "requires_action":
        return ChargeResult(
            payment_intent_id=intent["id"],
            status="requires_action",
            failure_code="authentication_required",
            decline_code="authentication_required",
            failure_message="This payment requires the cardholder's authentication.",
        )
    if status in ("processing", "requires_capture"):
        raise PaymentInFlight(intent["id"])
    error = intent.get("last_payment_error") or {}
    code = error.get("code") or "card_declined"
    return ChargeResult(
        payment_intent_id=intent["id"],
        status="requires_action" if code == "authentication_required" else "failed",
        failure_code=code,
        decline_code=error.get("decline_code") or code,
        failure_message=error.get("message") or "Your card was declined.",
    )


class PaymentInFlight(Exception):
    """Stripe has not decided the payment yet: the attempt stays open."""


class StripeProcessor:
    name = "stripe"
    hosts_checkout = True

    def __init__(
        self,
        *,
        secret_key: str,
        publishable_key: str,
        webhook_secret: str | None,
        api_base: str | None = None,
        public_api_base: str = STRIPE_API_BASE,
        http_client: stripe.HTTPClient | None = None,
        max_network_retries: int = 2,
        timeout_seconds: float = 30.0,
        rate_limit_backoff: tuple[float, ...] = RATE_LIMIT_BACKOFF,
    ) -> None:
        self.publishable_key = publishable_key
        self.webhook_secret = webhook_secret
        self.api_base: str | None = public_api_base
        self.test_mode = secret_key.startswith(("sk_test_", "rk_test_"))
        self.rate_limit_backoff = rate_limit_backoff
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base or STRIPE_API_BASE},
            max_network_retries=max_network_retries,
            http_client=http_client
            or stripe.HTTPXClient(timeout=timeout_seconds, allow_sync_methods=True),
        )

    def _call(
        self, fn: Callable[..., Any], *args: Any, key: str | None = None, **params: Any
    ) -> Any:
        """One API call under `key` (Stripe's Idempotency-Key), retried on 429 with backoff;
        the object answered, as plain data."""
        result = self._raw(fn, *args, key=key, **params)
        return result.to_dict()

    def _raw(self, fn: Callable[..., T], *args: Any, key: str | None = None, **params: Any) -> T:
        options: dict[str, Any] = {"idempotency_key": key} if key else {}
        for delay in (*self.rate_limit_backoff, None):
            try:
                return fn(*args, params=params, options=options)
            except stripe.RateLimitError:
                if delay is None:
                    raise
                log.warning("Stripe rate limit; retrying in %.1f s", delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # --- customers and cards ----------------------------------------------------------

    def create_customer(self, *, email: str, account_id: str) -> str:
        # No key of Billfold's: an account gets a new customer after Stripe deleted its
        # last one (`customer.deleted`), which a key derived from the account would replay.
        # The SDK's retries of this one call carry a key of their own.
        customer = self._call(
            self.client.v1.customers.create,
            email=email,
            metadata={"billfold_account_id": account_id},
        )
        return str(customer["id"])

    def create_setup_intent(self, *, customer_id: str) -> SetupIntent:
        intent = self._call(
            self.client.v1.setup_intents.create,
            customer=customer_id,
            usage="off_session",
            payment_method_types=["card"],
        )
        return SetupIntent(
            id=intent["id"], client_secret=str(intent["client_secret"]), status=intent["status"]
        )

    def retrieve_payment_method(self, payment_method_id: str) -> Card:
        try:
            pm = self._call(self.client.v1.payment_methods.retrieve, payment_method_id)
        except stripe.InvalidRequestError as exc:
            if _is_missing(exc):
                raise UnknownPaymentMethod(payment_method_id) from None
            raise
        if pm.get("type") != "card" or not pm.get("card"):
            raise UnknownPaymentMethod(payment_method_id)
        return _card(pm)

    def attach_payment_method(self, payment_method_id: str, *, customer_id: str) -> Card:
        try:
            pm = self._call(
                self.client.v1.payment_methods.attach,
                payment_method_id,
                key=stripe_idempotency_key("attach", f"{payment_method_id}:{customer_id}"),
                customer=customer_id,
            )
        except stripe.CardError as exc:
            error = _error_body(exc)
            code = str(error.get("code") or "card_declined")
            raise CardError(
                code,
                str(error.get("decline_code") or code),
                str(error.get("message") or "Your card was declined."),
            ) from None
        except stripe.InvalidRequestError as exc:
            # Unknown, or attached to another customer: answered alike, telling nothing.
            raise UnknownPaymentMethod(payment_method_id) from exc
        return _card(pm)

    def detach_payment_method(self, payment_method_id: str) -> None:
        try:
            self._call(self.client.v1.payment_methods.detach, payment_method_id)
        except stripe.InvalidRequestError as exc:
            raise UnknownPaymentMethod(payment_method_id) from exc

    # --- charges ------------------------------------------------------------------------

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        """An off-session PaymentIntent, confirmed at once."""
        try:
            intent = self._call(
                self.client.v1.payment_intents.create,
                key=stripe_idempotency_key("charge", idempotency_key),
                amount=amount_cents,
                currency=currency.lower(),
                customer=customer_id,
                payment_method=payment_method_id,
                confirm=True,
                off_session=True,
                description=description,
                metadata={KEY_FIELD: key_hash(idempotency_key)},
            )
        except stripe.CardError as exc:
            return self._declined(exc)
        except stripe.InvalidRequestError as exc:
            if _error_body(exc).get("param") == "payment_method" or _is_missing(exc):
                raise UnknownPaymentMethod(payment_method_id) from None
            raise
        return intent_result(intent)

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | Exception]:
        """One PaymentIntent per request, one after another: Stripe has no batch call."""
        return charge_each(self, requests)

    @staticmethod
    def _declined(exc: stripe.CardError) -> ChargeResult:
        error = _error_body(exc)
        intent = error.get("payment_intent") or {}
        intent_id = intent.get("id") if isinstance(intent, dict) else None
        if not intent_id:  # Stripe always names it; without it nothing can be recorded
            raise exc
        code = str(error.get("code") or "card_declined")
        return ChargeResult(
            payment_intent_id=str(intent_id),
            status="requires_action" if code == "authentication_required" else "failed",
            failure_code=code,
            decline_code=str(error.get("decline_code") or code),
            failure_message=str(error.get("message") or "Your card was declined."),
        )

    def find_charge(
        self, idempotency_key: str, *, customer_id: str, since: datetime
    ) -> ChargeResult | None:
        wanted = key_hash(idempotency_key)
        # Stripe's `created` is real time; `since` is the attempt's time, on the account's
        # test clock if it has one (maybe far ahead), and naive from SQLite.
        since = min(as_utc(since), wall_now())
        created_from = int((since - timedelta(minutes=10)).timestamp())
        page = self._raw(
            self.client.v1.payment_intents.list,
            customer=customer_id,
            created={"gte": created_from},
            limit=100,
        )
        for item in page.auto_paging_iter():
            intent = item.to_dict()
            if (intent.get("metadata") or {}).get(KEY_FIELD) == wanted:
                return intent_result(intent)
        return None

    def retrieve_charge(self, payment_intent_id: str) -> ChargeResult:
        return intent_result(self._call(self.client.v1.payment_intents.retrieve, payment_intent_id))

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str
    ) -> RefundResult:
        try:
            refund = self._call(
                self.client.v1.refunds.create,
                key=stripe_idempotency_key("refund", idempotency_key),
                payment_intent=payment_intent_id,
                amount=amount_cents,
                metadata={"billfold_refund_id": idempotency_key[:500]},
            )
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            if _is_missing(exc):
                raise UnknownPaymentMethod(payment_intent_id) from None
            log.warning("Stripe refused refund %s: %s", idempotency_key, exc.user_message)
            return RefundResult(refund_id="", status="failed")
        status = "failed" if refund["status"] in ("failed", "canceled") else "succeeded"
        return RefundResult(refund_id=refund["id"], status=status)

    def refunds_made_elsewhere(self, payment_intent_id: str) -> list[tuple[str, int]]:
        """(refund id, cents) of the succeeded refunds of a payment not made by Billfold
        (Stripe's dashboard); Billfold's own carry `billfold_refund_id` metadata."""
        page = self._raw(self.client.v1.refunds.list, payment_intent=payment_intent_id, limit=100)
        found = []
        for item in page.auto_paging_iter():
            refund = item.to_dict()
            if refund.get("status") in ("succeeded", "pending") and not (
                refund.get("metadata") or {}
            ).get("billfold_refund_id"):
                found.append((str(refund["id"]), int(refund["amount"])))
        return found

    # --- hosted checkout --------------------------------------------------------------

    def create_hosted_checkout(
        self,
        *,
        customer_id: str,
        amount_cents: int,
        currency: str,
        description: str,
        success_url: str,
        cancel_url: str,
        expires_at: datetime,
        idempotency_key: str,
        charge_key: str,
        metadata: dict[str, str],
    ) -> HostedCheckout | None:
        """A Stripe Checkout Session in payment mode that saves the card for off-session
        use (renewals, auto-funding)."""
        now = datetime.now(expires_at.tzinfo)
        ttl = min(max(expires_at - now, CHECKOUT_MIN_TTL), CHECKOUT_MAX_TTL)
        session = self._call(
            self.client.v1.checkout.sessions.create,
            key=stripe_idempotency_key("checkout", idempotency_key),
            mode="payment",
            customer=customer_id,
            line_items=[
                {
                    "price_data": {
                        "currency": currency.lower(),
                        "unit_amount": amount_cents,
                        "product_data": {"name": description},
                    },
                    "quantity": 1,
                }
            ],
            payment_intent_data={
                "setup_future_usage": "off_session",
                "description": description,
                "metadata": {**metadata, KEY_FIELD: key_hash(charge_key)},
            },
            success_url=success_url,
            cancel_url=cancel_url,
            expires_at=int((now + ttl).timestamp()),
            metadata=metadata,
        )
        return HostedCheckout(id=session["id"], url=str(session["url"]))

    def retrieve_hosted_checkout(self, checkout_id: str) -> HostedCheckoutState:
        try:
            session = self._call(self.client.v1.checkout.sessions.retrieve, checkout_id)
        except stripe.InvalidRequestError as exc:
            if _is_missing(exc):
                raise UnknownPaymentMethod(checkout_id) from None
            raise
        intent = session.get("payment_intent")
        intent_id = intent if isinstance(intent, str) or intent is None else intent["id"]
        payment_method = None
        paid = session.get("payment_status") == "paid"
        if paid and intent_id:
            pi = self._call(self.client.v1.payment_intents.retrieve, intent_id)
            method = pi.get("payment_method")
            payment_method = method if isinstance(method, str) or method is None else method["id"]
        return HostedCheckoutState(
            id=session["id"],
            paid=paid,
            expired=session.get("status") == "expired",
            payment_intent_id=intent_id,
            payment_method_id=payment_method,
        )

    # --- inbound webhooks -------------------------------------------------------------

    def construct_event(self, payload: bytes, signature: str | None) -> stripe.Event:
        """A webhook event whose signature checks out (5 minutes' tolerance); raises
        `stripe.SignatureVerificationError` otherwise."""
        if not self.webhook_secret:
            raise stripe.SignatureVerificationError(
                "No webhook secret is configured (BILLFOLD_STRIPE_WEBHOOK_SECRET).", signature
            )
        return self.client.construct_event(payload, signature, self.webhook_secret, tolerance=300)
