"""Unused time: what the rest of a paid period is worth when it ends early (a cancellation
now, a cycle reset), and crediting it to the wallet with a credit note."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from billfold.clock import as_utc, now
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice
from billfold.ledger import service as ledger
from billfold.money import ceil_to_cent, floor_to_cent, from_micros
from billfold.subscriptions import credits
from billfold.subscriptions.attempts import REVENUE
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.periods import prorate


@dataclass(frozen=True)
class UnusedTime:
    """What the rest of a paid period is worth when its included credits end early.

    The time's price share, less the included credits spent ahead of time: a period's
    credits are earned evenly over it, so credits spent beyond the elapsed share were
    paid for by the rest of the period and are not returned twice. value = time -
    credits_ahead, floored at zero; amounts returned round down to the cent.
    """

    time_micros: int  # price x remaining share, rounded down to the cent
    credits_ahead_micros: int  # included credits spent beyond the elapsed share
    allowance_micros: int  # included credits the elapsed share earned

    @property
    def deduction_micros(self) -> int:
        """The credits-ahead line of an invoice: whole cents, never beyond the time."""
        return min(self.time_micros, ceil_to_cent(self.credits_ahead_micros))

    @property
    def value_micros(self) -> int:
        return self.time_micros - self.deduction_micros

    def lines(self, plan: Plan, at: datetime, end: datetime) -> list[invoices.Line]:
        lines = []
        if self.time_micros:
            lines.append(
                invoices.Line(
                    "proration",
                    f"Unused time on {plan.name} after {at:%Y-%m-%d %H:%M:%S} UTC",
                    -self.time_micros,
                    (at, end),
                )
            )
        if self.deduction_micros:
            lines.append(
                invoices.Line(
                    "proration",
                    "Included credits already used beyond the elapsed time",
                    self.deduction_micros,
                    (at, end),
                )
            )
        return lines


def unused_time(session: Session, sub: Subscription, plan: Plan, *, at: datetime) -> UnusedTime:
    """The unused part of the current period at `at` (locks the wallet: take the number
    series first)."""
    start, end = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
    granted, spent = credits.spent_of_live_grants(session, sub)
    current = plan.included_credits_micros or 0
    total = max(1, int((end - start).total_seconds()))
    elapsed = max(0, min(total, int((at - start).total_seconds())))
    # Credits of the remaining time, rounded up: the allowance rounds in the house's favour.
    remaining_share = current - current * elapsed // total
    allowance = max(0, granted - remaining_share)
    return UnusedTime(
        time_micros=floor_to_cent(prorate(plan.price_micros, start=start, end=end, at=at)),
        credits_ahead_micros=max(0, spent - allowance),
        allowance_micros=allowance,
    )


def credit_unused_time(session: Session, sub: Subscription, unused: UnusedTime) -> None:
    """The unused time's value, credited to the wallet with a credit note against the
    invoice that paid the period. It is account credit, not cash: it lands as
    promotional credit (spendable, never withdrawable), as Stripe keeps it as customer
    balance; no card payment stands behind it to refund."""
    amount = unused.value_micros
    latest = session.get(Invoice, sub.latest_invoice_id) if sub.latest_invoice_id else None
    if latest is not None and latest.status == "paid":
        at = now()
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        invoices.issue_credit_note(
            session,
            original=latest,
            lines=unused.lines(plan, at, as_utc(sub.current_period_end)),
            source=f"unused:{sub.id}",
        )
    ledger.post(
        session,
        account_id=sub.account_id,
        kind="subscription_unused_time",
        usecase="subscription",
        description="Unused subscription time credited on cancellation",
        reference=f"unused:{sub.id}",
        postings=[
            ledger.Posting(ledger.wallet_account("promotional"), amount),
            ledger.Posting(REVENUE, -amount),
        ],
        meta={
            "subscription_id": sub.id,
            "unused_time": str(from_micros(unused.time_micros)),
            "credits_used_ahead": str(from_micros(unused.deduction_micros)),
        },
    )
