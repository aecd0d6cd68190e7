"""The payment processor interface: the only place card money moves.

Billfold owns wallets, plans and invoices; a processor only stores cards and moves
money. Calls are made outside any open database transaction (they may be network
calls), each with an idempotency key so a retried step never moves money twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
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


@dataclass(frozen=True)
class HostedCheckout:
    """A payment page the processor hosts (Stripe Checkout) for one payment link."""

    id: str  # cs_… at the processor
    url: str


@dataclass(frozen=True)
class HostedCheckoutState:
    """What the processor says of a hosted checkout: `paid` once its payment succeeded."""

    id: str
    paid: bool
    expired: bool
    payment_intent_id: str | None
    payment_method_id: str | None


@dataclass(frozen=True)
class ChargeRequest:
    """One charge of `Processor.charge_many` (`charge`'s arguments)."""

    customer_id: str
    payment_method_id: str
    amount_cents: int
    currency: str
    idempotency_key: str
    description: str


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
    # Where clients tokenize cards (Stripe's API), or None: Billfold's own sandbox API.
    api_base: str | None
    # Test mode (the sandbox, or Stripe test keys): test clocks may run.
    test_mode: bool
    # The processor hosts the page where a human pays a payment link (Stripe Checkout);
    # else Billfold's own page takes the card (sandbox).
    hosts_checkout: bool

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

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | Exception]:
        """`charge` for each request, answered in order: what `charge` would return, or the
        exception it would raise. A failure of the call as a whole (the processor
        unreachable) raises."""
        ...

    def find_charge(
        self, idempotency_key: str, *, customer_id: str, since: datetime
    ) -> ChargeResult | None:
        """The charge made for `customer_id` under this idempotency key (not before `since`,
        when the attempt was written), if the processor ever saw it."""
        ...

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str
    ) -> RefundResult: ...

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
        """A page the processor hosts to take this payment from a human (saving the card
        for off-session use), or None when Billfold's own page takes the card (sandbox).
        The payment it takes is found under `charge_key` (`find_charge`)."""
        ...

    def retrieve_hosted_checkout(self, checkout_id: str) -> HostedCheckoutState: ...


class ChargeNotMade(Exception):
    """`charge_each` stopped before this request (its time ran out): nothing was sent."""


# How long `charge_each` goes on sending charges: a caller's batch of them must stay well
# inside a job's lease, whatever the processor's timeouts.
CHARGE_EACH_BUDGET = 20.0  # seconds


def charge_each(
    processor: Processor, requests: Sequence[ChargeRequest], *, budget: float = CHARGE_EACH_BUDGET
) -> list[ChargeResult | Exception]:
    """`charge_many` as one `charge` after another (a processor with no batch call); the
    requests whose turn comes after `budget` seconds are not sent (`ChargeNotMade`)."""
    started = time.monotonic()
    answers: list[ChargeResult | Exception] = []
    for request in requests:
        if time.monotonic() - started > budget:
            answers.append(ChargeNotMade(request.idempotency_key))
            continue
        try:
            answers.append(processor.charge(**asdict(request)))
        except Exception as exc:  # answered in its place, as the caller's `charge` would raise
            answers.append(exc)
    return answers
