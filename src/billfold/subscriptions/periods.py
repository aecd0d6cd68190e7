"""Billing periods and proration arithmetic, in whole seconds and integer micros.

Rounding a prorated amount to a card amount is `money.round_to_cent`."""

from __future__ import annotations

from datetime import datetime

from dateutil.relativedelta import relativedelta


def add_periods(anchor: datetime, period: str, count: int) -> datetime:
    """`count` months or years after `anchor`, clamped to the month's last day (Jan 31 +
    1 month = Feb 28 or 29; + 2 months = Mar 31), as Stripe's billing cycle anchor does."""
    if period == "month":
        return anchor + relativedelta(months=count)
    if period == "year":
        return anchor + relativedelta(years=count)
    raise ValueError(f"unknown period {period!r}")


def prorate(amount_micros: int, *, start: datetime, end: datetime, at: datetime) -> int:
    """The share of `amount_micros` for the rest of [start, end) after `at`, to the second
    (unrounded micros, floor): amount * remaining seconds // period seconds."""
    total = int((end - start).total_seconds())
    remaining = max(0, min(total, int((end - at).total_seconds())))
    if total <= 0:
        return 0
    return amount_micros * remaining // total
