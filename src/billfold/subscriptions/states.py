"""Subscription statuses, kinds and billing reasons, and the one table of status changes.

Every change of a subscription's status goes through `transition(subscription, event)`,
which looks up `(status, event)` in `TRANSITIONS` and refuses anything not there with a
409. The table also holds the events that leave the status as it is (scheduling a
cancellation, changing the plan, resetting the cycle, fixing a payment, rolling into
the next period, a dunning retry): they are allowed exactly where the table lists
them, so "what may happen to a subscription that is X" has one answer. `check` asks
the table without changing anything (for use cases that must look at something else
before they commit to the change).

A subscription starts `incomplete` (its first period is charged now) or `trialing`
(`START_STATUSES`); `canceled` and `incomplete_expired` are the ends (`TERMINAL`).
The values are Stripe's words and the strings stored and answered, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from billfold.errors import Conflict, ErrorCode


class SubscriptionStatus(StrEnum):
    INCOMPLETE = "incomplete"  # the first period's payment has not succeeded (yet)
    INCOMPLETE_EXPIRED = "incomplete_expired"  # …and never did within 23 hours
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"  # a renewal's payment failed; dunning retries it
    PAUSED = "paused"
    CANCELED = "canceled"
    UNPAID = "unpaid"  # dunning gave up and the policy keeps it (BILLFOLD_DUNNING_FINAL_STATUS)


class PlanKind(StrEnum):
    """A plan's kind, and so its subscriptions' (`Subscription.kind`)."""

    NORMAL = "normal"  # one live per account
    ADDON = "addon"  # on top of an active normal one
    ENTERPRISE = "enterprise"  # set up by the operator


class PlanStatus(StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"  # no new subscriptions; existing ones keep renewing


class GrantStatus(StrEnum):
    """An included-credits grant's (`CreditGrant.status`)."""

    ACTIVE = "active"
    EXPIRED = "expired"


class BillingReason(StrEnum):
    """Why a subscription invoice was made (Stripe's `billing_reason`); also the purpose of
    the card payment that pays it (`Payment.purpose`)."""

    CREATE = "subscription_create"  # the first period
    CYCLE = "subscription_cycle"  # a renewal
    UPDATE = "subscription_update"  # an upgrade, prorated
    RESET = "subscription_reset"  # a new period now, less the current one's unused time


S = SubscriptionStatus

# Statuses in which a subscription still holds its place (one normal one per account).
LIVE_STATUSES = (S.INCOMPLETE, S.TRIALING, S.ACTIVE, S.PAST_DUE, S.PAUSED, S.UNPAID)
START_STATUSES = (S.INCOMPLETE, S.TRIALING)
TERMINAL = (S.CANCELED, S.INCOMPLETE_EXPIRED)


class Event(StrEnum):
    # What the account asks for.
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"  # now
    SCHEDULE_CANCEL = "schedule_cancel"  # at the period's end (the status stays)
    CHANGE_PLAN = "change_plan"  # an upgrade is paid for first; the status stays
    RESET_CYCLE = "reset_cycle"  # paid for first; the status stays
    FIX_PAYMENT = "fix_payment"  # pay the open invoice now; its outcome moves the status
    # What time does.
    RENEW = "renew"  # a period ends and the next one is invoiced (the status stays)
    PERIOD_ENDED = "period_ended"  # …unless it was canceled at the period's end
    RETRY_PAYMENT = "retry_payment"  # a dunning retry falls due (the status stays)
    EXPIRE = "expire"  # 23 h after an unpaid start, or a new start takes its place
    # What a payment's outcome does.
    FIRST_PAYMENT_SUCCEEDED = "first_payment_succeeded"
    RENEWAL_PAID = "renewal_paid"
    RENEWAL_FAILED = "renewal_failed"
    DUNNING_UNPAID = "dunning_unpaid"  # the last retry failed; the policy keeps it unpaid
    DUNNING_CANCELED = "dunning_canceled"  # …or ends it


E = Event


def _each(event: Event, moves: Mapping[S, S]) -> dict[tuple[S, Event], S]:
    return {(source, event): target for source, target in moves.items()}


def _stays(event: Event, *statuses: S) -> dict[tuple[S, Event], S]:
    return {(status, event): status for status in statuses}


TRANSITIONS: dict[tuple[SubscriptionStatus, Event], SubscriptionStatus] = {
    **_each(E.PAUSE, {S.ACTIVE: S.PAUSED}),
    **_each(E.RESUME, {S.PAUSED: S.ACTIVE}),
    **_each(E.CANCEL, {status: S.CANCELED for status in LIVE_STATUSES}),
    **_stays(E.SCHEDULE_CANCEL, S.ACTIVE, S.TRIALING, S.PAUSED),
    **_stays(E.CHANGE_PLAN, S.ACTIVE, S.TRIALING),
    **_stays(E.RESET_CYCLE, S.ACTIVE),
    **_stays(E.FIX_PAYMENT, S.INCOMPLETE, S.PAST_DUE, S.UNPAID),
    **_stays(E.RENEW, S.ACTIVE, S.TRIALING),
    **_each(E.PERIOD_ENDED, {S.ACTIVE: S.CANCELED, S.TRIALING: S.CANCELED}),
    **_stays(E.RETRY_PAYMENT, S.PAST_DUE),
    **_each(E.EXPIRE, {S.INCOMPLETE: S.INCOMPLETE_EXPIRED}),
    **_each(E.FIRST_PAYMENT_SUCCEEDED, {S.INCOMPLETE: S.ACTIVE}),
    **_each(
        E.RENEWAL_PAID,
        {S.ACTIVE: S.ACTIVE, S.TRIALING: S.ACTIVE, S.PAST_DUE: S.ACTIVE, S.UNPAID: S.ACTIVE},
    ),
    **_each(E.RENEWAL_FAILED, {S.ACTIVE: S.PAST_DUE, S.TRIALING: S.PAST_DUE}),
    **_each(E.DUNNING_UNPAID, {S.PAST_DUE: S.UNPAID}),
    **_each(E.DUNNING_CANCELED, {S.PAST_DUE: S.CANCELED}),
}


@dataclass(frozen=True)
class Refusal:
    """How the API answers an event the table refuses: 409 with this code and message
    (`{status}` is the subscription's), details `subscription_id` and `status`."""

    message: str
    code: ErrorCode = ErrorCode.SUBSCRIPTION_NOT_ACTIVE


def _cannot(verb: str, code: ErrorCode = ErrorCode.SUBSCRIPTION_NOT_ACTIVE) -> Refusal:
    return Refusal(f"Cannot {verb} a subscription that is {{status}}.", code)


REFUSALS: dict[Event, Refusal] = {
    E.PAUSE: _cannot("pause"),
    E.RESUME: _cannot("resume", ErrorCode.SUBSCRIPTION_NOT_PAUSED),
    E.CANCEL: _cannot("cancel"),
    E.SCHEDULE_CANCEL: _cannot("schedule the cancellation of"),
    E.CHANGE_PLAN: _cannot("change the plan of"),
    E.RESET_CYCLE: _cannot("reset the cycle of"),
    E.FIX_PAYMENT: Refusal(
        "This subscription has no failed payment to fix.", ErrorCode.NOTHING_TO_FIX
    ),
}
# Where one status has its own answer.
REFUSALS_FROM: dict[tuple[SubscriptionStatus, Event], Refusal] = {
    (S.PAUSED, E.PAUSE): _cannot("pause", ErrorCode.SUBSCRIPTION_ALREADY_PAUSED),
}


class HasStatus(Protocol):
    id: str
    status: str


def target(status: str, event: Event) -> SubscriptionStatus | None:
    """The status `event` moves a subscription that is `status` to; None if it may not."""
    return TRANSITIONS.get((SubscriptionStatus(status), event))


def can(subscription: HasStatus, event: Event) -> bool:
    return target(subscription.status, event) is not None


def refusal(subscription: HasStatus, event: Event) -> Conflict:
    """The 409 that refuses `event` for the subscription as it is."""
    status = SubscriptionStatus(subscription.status)
    answer = REFUSALS_FROM.get((status, event)) or REFUSALS.get(event)
    if answer is None:  # an event of time or of a payment: its callers ask `can` first
        answer = Refusal(f"A subscription that is {{status}} cannot take '{event}'.")
    return Conflict(
        answer.message.format(status=status),
        code=answer.code,
        details={"subscription_id": subscription.id, "status": status.value},
    )


def check(subscription: HasStatus, event: Event) -> SubscriptionStatus:
    """The status `event` would move the subscription to, or the 409 refusing it."""
    to = target(subscription.status, event)
    if to is None:
        raise refusal(subscription, event)
    return to


def transition(subscription: HasStatus, event: Event) -> SubscriptionStatus:
    """Apply `event` to the subscription's status by the table (or refuse it with 409);
    the status it had."""
    previous = SubscriptionStatus(subscription.status)
    to = check(subscription, event)
    if to != previous:
        subscription.status = to
    return previous
