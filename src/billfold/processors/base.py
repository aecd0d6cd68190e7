"""The payment processor interface: the only place card money moves.

Billfold owns wallets, plans and invoices; a processor only stores cards and moves
money. Calls are made outside any open database transaction (they may be network
calls), each with an idempotency key so a retried step never moves money twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    customer_id: str | None = None


@dataclass(frozen=True)
class ChargeResult:
    payment_intent_id: str
    status: str  # succeeded, failed, requires_action
    failure_code: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    status: str  # succeeded, failed


@dataclass(frozen=True)
class SetupIntent:
    id: str
    client_secret: str
    status: str


class CardError(Exception):
    """The processor refused the card itself (on attach), Stripe's `card_error`."""

    def __init__(self, code: str, decline_code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.decline_code = decline_code
        self.message = message


class UnknownPaymentMethod(Exception):
    """No such payment method at the processor."""


class Processor(Protocol):
    name: str
    publishable_key: str

    def create_customer(self, *, email: str, account_id: str) -> str: ...

    def create_setup_intent(self, *, customer_id: str) -> SetupIntent: ...

    def retrieve_payment_method(self, payment_method_id: str) -> Card: ...

    def attach_payment_method(self, payment_method_id: str, *, customer_id: str) -> Card: ...

    def detach_payment_method(self, payment_method_id: str) -> None: ...

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult: ...

    def find_charge(self, idempotency_key: str) -> ChargeResult | None:
        """The charge made under this idempotency key, if the processor ever saw it."""
        ...

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str
    ) -> RefundResult: ...
