"""Dunning: when a failed renewal's payment is tried again, and when to stop trying.

A renewal whose payment fails leaves its invoice open and the subscription past_due.
Retries are jobs at the configured days after the renewal (1, 3 and 5 by default,
`BILLFOLD_DUNNING_RETRY_DAYS`); after the last one fails the subscription becomes
`canceled` or `unpaid` (`BILLFOLD_DUNNING_FINAL_STATUS`), which the subscription's
payment outcomes apply. fix-payment retries at any time and schedules nothing.

The policy is the operator's settings, read where a payment's outcome is recorded
(`DunningPolicy.from_settings(services.settings)`); nothing here is global.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from billfold.clock import as_utc
from billfold.config import Settings
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs
from billfold.subscriptions.states import Event, SubscriptionStatus

RETRY_JOB = "subscriptions.retry_payment"


@dataclass(frozen=True)
class DunningPolicy:
    retry_days: tuple[int, ...] = (1, 3, 5)
    final_status: SubscriptionStatus = SubscriptionStatus.CANCELED  # or UNPAID

    @classmethod
    def from_settings(cls, settings: Settings) -> DunningPolicy:
        return cls(
            retry_days=tuple(settings.dunning_retry_days),
            final_status=SubscriptionStatus(settings.dunning_final_status),
        )

    @property
    def final_event(self) -> Event:
        """What the last failed retry does to the subscription."""
        if self.final_status == SubscriptionStatus.UNPAID:
            return Event.DUNNING_UNPAID
        return Event.DUNNING_CANCELED


def schedule_retry(session: Session, invoice: Invoice, policy: DunningPolicy, *, step: int) -> bool:
    """Queue retry number `step` (0-based) of an open renewal invoice; False when the
    retries are spent."""
    days = policy.retry_days
    if step >= len(days):
        invoice.next_payment_attempt = None
        return False
    at = as_utc(invoice.created_at) + timedelta(days=days[step])
    invoice.next_payment_attempt = at
    jobs.enqueue(
        session,
        kind=RETRY_JOB,
        account_id=invoice.account_id,
        payload={"invoice_id": invoice.id, "step": step},
        run_at=at,
        dedupe_key=f"dunning:{invoice.id}:{step}",
    )
    return True


def step_after(trigger: str) -> int | None:
    """The retry to schedule after a failed attempt made by `trigger`: the first after the
    renewal's own attempt, the next after a scheduled retry, none after fix-payment."""
    if trigger == "renewal":
        return 0
    if trigger.startswith("retry:"):
        return int(trigger.split(":")[1]) + 1
    return None
