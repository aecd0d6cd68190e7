"""The sandbox processor: Stripe's test mode, in-process, with its state in its own tables.

It behaves like a separate service: every call runs in its own short transaction, so
callers must not hold a write transaction open while calling it (they would not with a
real processor either). Card numbers are checked at tokenization and then forgotten:
only brand, last4, expiry, a keyed fingerprint and the test card's scripted outcome
are kept.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import asdict
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import JSON, Index, String, Table, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from billfold.clock import now
from billfold.db import Base, Database, insert_or_ignore, lock_rows
from billfold.ids import new_id
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
)
from billfold.processors.cards import TEST_CARD_DECLINES, Decline, check_card, fingerprint

_FINGERPRINT_SECRET = "billfold-sandbox"  # noqa: S105 - keys fingerprints, not a credential


class SandboxRequestError(Exception):
    """A request the sandbox refuses as Stripe would: an `invalid_request_error`."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


def _no_such_payment_method(payment_method_id: str) -> SandboxRequestError:
    return SandboxRequestError(
        400,
        "resource_missing",
        f"No such PaymentMethod: '{payment_method_id}'",
        param="payment_method",
    )


class SandboxObject(Base):
    """A sandbox processor object (customer, payment_method, payment_intent, refund)."""

    __tablename__ = "sandbox_objects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    object: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (Index("ix_sandbox_objects_object", "object"),)


def _card_of(obj: SandboxObject) -> Card:
    data = obj.data
    return Card(
        id=obj.id,
        brand=data["brand"],
        last4=data["last4"],
        exp_month=data["exp_month"],
        exp_year=data["exp_year"],
        fingerprint=data["fingerprint"],
        customer_id=data.get("customer"),
    )


class SandboxProcessor:
    name = "sandbox"
    api_base: str | None = None  # cards are tokenized at Billfold's own /sandbox API
    test_mode = True
    hosts_checkout = False

    def __init__(self, database: Database, *, publishable_key: str) -> None:
        self.database = database
        self.publishable_key = publishable_key

    # --- tokenization (called by the Stripe-compatible HTTP endpoint) -------------------

    def tokenize_card(
        self, *, number: str, exp_month: str, exp_year: str, cvc: str | None
    ) -> dict[str, Any]:
        """Create a payment method from raw card fields; raises cards.InvalidCard."""
        checked = check_card(number, exp_month, exp_year, cvc, today=date.today())
        decline = TEST_CARD_DECLINES.get(checked.number)
        data = {
            "brand": checked.brand,
            "last4": checked.last4,
            "exp_month": checked.exp_month,
            "exp_year": checked.exp_year,
            "fingerprint": fingerprint(checked.number, _FINGERPRINT_SECRET),
            "decline": asdict(decline) if decline else None,
            "customer": None,
        }
        with self.database.transaction() as session:
            obj = SandboxObject(id=new_id("pm"), object="payment_method", data=data)
            session.add(obj)
        return self.payment_method_json(obj)

    @staticmethod
    def payment_method_json(obj: SandboxObject) -> dict[str, Any]:
        data = obj.data
        return {
            "id": obj.id,
            "object": "payment_method",
            "type": "card",
            "created": int(obj.created_at.timestamp()),
            "customer": data.get("customer"),
            "livemode": False,
            "card": {
                "brand": data["brand"],
                "last4": data["last4"],
                "exp_month": data["exp_month"],
                "exp_year": data["exp_year"],
                "fingerprint": data["fingerprint"],
                "funding": "credit",
                "country": "US",
            },
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        }

    # --- the Processor interface --------------------------------------------------------

    def create_customer(self, *, email: str, account_id: str) -> str:
        with self.database.transaction() as session:
            obj = SandboxObject(
                id=new_id("cus"),
                object="customer",
                data={"email": email, "metadata": {"account_id": account_id}},
            )
            session.add(obj)
        return obj.id

    def create_setup_intent(self, *, customer_id: str) -> SetupIntent:
        intent_id = new_id("seti")
        secret = f"{intent_id}_secret_{new_id('s', 24)[2:]}"
        with self.database.transaction() as session:
            session.add(
                SandboxObject(
                    id=intent_id,
                    object="setup_intent",
                    data={
                        "customer": customer_id,
                        "client_secret": secret,
                        "status": "requires_payment_method",
                        "payment_method": None,
                        "usage": "off_session",
                    },
                )
            )
        return SetupIntent(id=intent_id, client_secret=secret, status="requires_payment_method")

    def confirm_setup_intent(
        self,
        setup_intent_id: str,
        *,
        client_secret: str | None,
        card: dict[str, str | None] | None,
        payment_method: str | None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Confirm with new card details or an existing pm; (setup intent JSON, card error).

        As Stripe does with a publishable key: the intent's client_secret must match
        (required to confirm with an existing payment method, checked whenever given),
        and an existing payment method must be unattached or the intent's customer's own.
        Raises cards.InvalidCard for malformed card data and SandboxRequestError for what
        Stripe refuses before confirming.
        """
        with self.database.read() as session:
            self._setup_intent(session, setup_intent_id, client_secret=client_secret)
        if card is not None:
            pm_id = self.tokenize_card(
                number=card.get("number") or "",
                exp_month=card.get("exp_month") or "",
                exp_year=card.get("exp_year") or "",
                cvc=card.get("cvc"),
            )["id"]
        elif payment_method:
            if client_secret is None:
                raise SandboxRequestError(
                    400,
                    "parameter_missing",
                    "Missing required param: client_secret (needed with a publishable key).",
                    param="client_secret",
                )
            pm_id = payment_method
        else:
            raise SandboxRequestError(
                400,
                "parameter_missing",
                "Give payment_method_data[card][…] fields or a payment_method.",
                param="payment_method_data",
            )
        with self.database.transaction() as session:
            intent = self._setup_intent(
                session, setup_intent_id, client_secret=client_secret, lock=True
            )
            if intent.data["status"] == "succeeded":
                return self.setup_intent_json(intent), None
            try:
                pm = self._payment_method(session, pm_id, lock=True)
            except UnknownPaymentMethod:
                raise _no_such_payment_method(pm_id) from None
            owner = pm.data.get("customer")
            if owner is not None and owner != intent.data["customer"]:
                # Another customer's card: answered as Stripe answers an id it will not
                # show this key, without saying whether it exists.
                raise _no_such_payment_method(pm_id)
            decline = pm.data.get("decline")
            data = {**intent.data, "payment_method": pm_id, "last_setup_error": None}
            error = None
            if decline and decline["on_attach"]:
                data["status"] = "requires_payment_method"
                error = {
                    "type": "card_error",
                    "code": decline["code"],
                    "decline_code": decline["decline_code"],
                    "message": decline["message"],
                }
                data["last_setup_error"] = error
            elif decline and decline["off_session_only"]:
                data["status"] = "requires_action"
                data["next_action"] = {"type": "use_stripe_sdk"}
            else:
                data["status"] = "succeeded"
                pm.data = {**pm.data, "customer": data["customer"]}
            intent.data = data
            return self.setup_intent_json(intent), error

    @staticmethod
    def _setup_intent(
        session: Session, setup_intent_id: str, *, client_secret: str | None, lock: bool = False
    ) -> SandboxObject:
        intent = session.get(SandboxObject, setup_intent_id, with_for_update=lock)
        if (
            intent is None
            or intent.object != "setup_intent"
            or (
                client_secret is not None
                and not hmac.compare_digest(
                    client_secret.encode(), str(intent.data["client_secret"]).encode()
                )
            )
        ):
            # A wrong secret is answered like an unknown intent: it tells nothing.
            raise SandboxRequestError(
                404,
                "resource_missing",
                f"No such setup_intent: '{setup_intent_id}'",
                param="intent",
            )
        return intent

    @staticmethod
    def setup_intent_json(obj: SandboxObject) -> dict[str, Any]:
        data = obj.data
        return {
            "id": obj.id,
            "object": "setup_intent",
            "client_secret": data["client_secret"],
            "customer": data["customer"],
            "payment_method": data["payment_method"],
            "status": data["status"],
            "usage": data["usage"],
            "next_action": data.get("next_action"),
            "last_setup_error": data.get("last_setup_error"),
            "livemode": False,
        }

    def _payment_method(
        self, session: Session, payment_method_id: str, *, lock: bool = False
    ) -> SandboxObject:
        obj = session.get(SandboxObject, payment_method_id, with_for_update=lock)
        if obj is None or obj.object != "payment_method":
            raise UnknownPaymentMethod(payment_method_id)
        return obj

    def retrieve_payment_method(self, payment_method_id: str) -> Card:
        with self.database.read() as session:
            return _card_of(self._payment_method(session, payment_method_id))

    def attach_payment_method(self, payment_method_id: str, *, customer_id: str) -> Card:
        with self.database.transaction() as session:
            obj = self._payment_method(session, payment_method_id, lock=True)
            decline = obj.data.get("decline")
            if decline and decline["on_attach"]:
                raise CardError(decline["code"], decline["decline_code"], decline["message"])
            owner = obj.data.get("customer")
            if owner and owner != customer_id:
                raise UnknownPaymentMethod(payment_method_id)
            obj.data = {**obj.data, "customer": customer_id}
            return _card_of(obj)

    def detach_payment_method(self, payment_method_id: str) -> None:
        with self.database.transaction() as session:
            obj = self._payment_method(session, payment_method_id, lock=True)
            obj.data = {**obj.data, "customer": None}

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
        request = ChargeRequest(
            customer_id, payment_method_id, amount_cents, currency, idempotency_key, description
        )
        with self.database.transaction() as session:
            existing = session.scalars(
                select(SandboxObject).where(SandboxObject.idempotency_key == idempotency_key)
            ).first()
            if existing is not None:
                return self._charge_result(existing)
            pm = self._payment_method(session, payment_method_id, lock=True)
            row = _new_charge(pm, request)
            inserted = insert_or_ignore(session, SandboxObject, row, ["idempotency_key"])
            if not inserted:  # a concurrent call with the same key won
                session.rollback()
                return self._replay(idempotency_key)
            return self._charge_result(SandboxObject(id=row["id"], data=row["data"]))

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | Exception]:
        """`charge` for each request, in one transaction: the payment methods locked in id
        order, then the charges made before under the keys read (after the locks: a
        charge under the same key, which holds its card's lock until it commits, is seen
        made), each once; the new charges written by one INSERT."""
        keys = [request.idempotency_key for request in requests]
        answers: list[ChargeResult | Exception] = []
        with self.database.transaction() as session:
            methods = lock_rows(
                session,
                SandboxObject,
                SandboxObject.id,
                [request.payment_method_id for request in requests],
            )
            made = {
                obj.idempotency_key: obj
                for obj in session.scalars(
                    select(SandboxObject).where(SandboxObject.idempotency_key.in_(keys))
                )
            }
            rows: list[dict[str, Any]] = []
            for request in requests:
                obj = made.get(request.idempotency_key)
                if obj is None:
                    pm = methods.get(request.payment_method_id)
                    if pm is None or pm.object != "payment_method":
                        answers.append(UnknownPaymentMethod(request.payment_method_id))
                        continue
                    try:
                        row = _new_charge(pm, request)
                    except UnknownPaymentMethod as exc:
                        answers.append(exc)
                        continue
                    rows.append(row)
                    obj = made[request.idempotency_key] = SandboxObject(
                        id=row["id"], data=row["data"]
                    )
                answers.append(self._charge_result(obj))
            if rows:
                session.execute(insert(_SANDBOX_OBJECTS), rows)
        return answers

    def _replay(self, idempotency_key: str) -> ChargeResult:
        found = self._charge_by_key(idempotency_key)
        assert found is not None
        return found

    def find_charge(
        self, idempotency_key: str, *, customer_id: str, since: datetime
    ) -> ChargeResult | None:
        return self._charge_by_key(idempotency_key)

    def _charge_by_key(self, idempotency_key: str) -> ChargeResult | None:
        with self.database.read() as session:
            obj = session.scalars(
                select(SandboxObject).where(
                    SandboxObject.idempotency_key == idempotency_key,
                    SandboxObject.object == "payment_intent",
                )
            ).first()
            return self._charge_result(obj) if obj is not None else None

    @staticmethod
    def _charge_result(obj: SandboxObject) -> ChargeResult:
        data = obj.data
        if data["status"] == "succeeded":
            return ChargeResult(payment_intent_id=obj.id, status="succeeded")
        error = data["last_payment_error"]
        return ChargeResult(
            payment_intent_id=obj.id,
            status="requires_action" if data["status"] == "requires_action" else "failed",
            failure_code=error["code"],
            decline_code=error["decline_code"],
            failure_message=error["message"],
        )

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str
    ) -> RefundResult:
        with self.database.transaction() as session:
            existing = session.scalars(
                select(SandboxObject).where(SandboxObject.idempotency_key == idempotency_key)
            ).first()
            if existing is not None:
                return RefundResult(refund_id=existing.id, status=existing.data["status"])
            intent = session.get(SandboxObject, payment_intent_id, with_for_update=True)
            if intent is None or intent.object != "payment_intent":
                raise UnknownPaymentMethod(payment_intent_id)
            refundable = intent.data["amount"] - intent.data["amount_refunded"]
            if intent.data["status"] != "succeeded" or amount_cents > refundable:
                status = "failed"
            else:
                status = "succeeded"
                intent.data = {
                    **intent.data,
                    "amount_refunded": intent.data["amount_refunded"] + amount_cents,
                }
            refund = SandboxObject(
                id=new_id("re"),
                object="refund",
                idempotency_key=idempotency_key,
                data={
                    "payment_intent": payment_intent_id,
                    "amount": amount_cents,
                    "status": status,
                },
            )
            session.add(refund)
        return RefundResult(refund_id=refund.id, status=status)

    # --- hosted checkout: the sandbox has none; Billfold's own page takes the card -------

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
        return None

    def retrieve_hosted_checkout(self, checkout_id: str) -> HostedCheckoutState:
        raise UnknownPaymentMethod(checkout_id)


_SANDBOX_OBJECTS = cast(Table, SandboxObject.__table__)


def _new_charge(pm: SandboxObject, request: ChargeRequest) -> dict[str, Any]:
    """The PaymentIntent row a charge of `pm` (locked) makes: succeeded, or declined as the
    test card says (UnknownPaymentMethod: another customer's card). A success attaches the
    card to the customer, as an off-session charge with setup_future_usage does."""
    owner = pm.data.get("customer")
    if owner and owner != request.customer_id:
        raise UnknownPaymentMethod(request.payment_method_id)
    raw_decline = pm.data.get("decline")
    decline = Decline(**raw_decline) if raw_decline else None
    data: dict[str, Any] = {
        "amount": request.amount_cents,
        "currency": request.currency.lower(),
        "customer": request.customer_id,
        "payment_method": request.payment_method_id,
        "description": request.description,
        "amount_refunded": 0,
    }
    if decline is None:
        data["status"] = "succeeded"
        if owner != request.customer_id:
            pm.data = {**pm.data, "customer": request.customer_id}
    else:
        data["status"] = (
            "requires_action" if decline.off_session_only else "requires_payment_method"
        )
        data["last_payment_error"] = {
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline.message,
        }
    return {
        "id": new_id("pi"),
        "object": "payment_intent",
        "idempotency_key": request.idempotency_key,
        "data": data,
        "created_at": now(),
    }
