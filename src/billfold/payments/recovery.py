"""What a `subscribe` payment link's charge asks of the subscriptions domain.

(Card charges are recorded by `billfold.payments.attempts`; this topic moves to the
checkout domain with the subscription flows.)
"""

from __future__ import annotations

from dataclasses import dataclass

from billfold.events import Topic
from billfold.payments.models import Payment


@dataclass(frozen=True)
class PendingCharge:
    """The link's charge: who pays, for which plan, through which checkout session."""

    account_id: str
    plan_id: int | None
    checkout_session_id: str | None


@dataclass(frozen=True)
class ChargeRecorded:
    charge: PendingCharge
    payment: Payment


# A `subscribe` payment link's charge: start the subscription; its ledger transaction's
# id, or None if the account took that subscription's place meanwhile (the money then
# funds the wallet).
LINK_SUBSCRIPTION_PAID = Topic[ChargeRecorded, "str | None"](
    "payments.link_subscription_paid", single=True
)
