"""Dunning: when a failed renewal's payment is tried again, and when to stop trying.

A renewal whose payment fails leaves its invoice open and the subscription past_due.
Retries are jobs at the configured days after the renewal (1, 3 and 5 by default,
`BILLFOLD_DUNNING_RETRY_DAYS`); after the last one fails the subscription becomes
`canceled` or `unpaid` (`BILLFOLD_DUNNING_FINAL_STATUS`), which the subscription
service applies. fix-payment retries at any time and schedules nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from billfold.clock import as_utc
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs

RETRY_JOB = "subscriptions.retry_payment"


@dataclass(frozen=True)
class DunningPolicy:
    retry_days: tuple[int, ...] = (1, 3, 5)
    final_status: str = "canceled"  # or "unpaid"


_policy = DunningPolicy()


def configure(policy: DunningPolicy) -> None:
    """Set from the operator's settings when the app's services are built."""
    global _policy
    _policy = policy


def policy() -> DunningPolicy:
    return _policy


def schedule_retry(session: Session, invoice: Invoice, *, step: int) -> bool:
    """Queue retry number `step` (0-based) of an open renewal invoice; False when the
    retries are spent."""
    days = _policy.retry_days
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
