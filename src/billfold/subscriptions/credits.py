"""Included credits: subscription credit granted per period, expiring at its period's end.

A plan's included credits land in the wallet's subscription bucket (spent before any
other credit) as a grant that expires at the end of the period it belongs to. Grants
are spent earliest-expiring first, so when a grant expires, the part of it still unspent
is what the bucket holds beyond the other live grants: min(grant, bucket - others),
never below zero. Expiry is a job at each grant's expiry time; a paused subscription's
grants do not expire (their expiry moves by the paused time on resume). Whatever
changes grants locks the account's wallet first, as expiry does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, Select, Table, insert, select
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.errors import Conflict, ErrorCode
from billfold.ids import new_id
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ledger import service as ledger
from billfold.ledger.models import Wallet
from billfold.money import from_micros
from billfold.subscriptions.models import CreditGrant, Subscription
from billfold.subscriptions.states import GrantStatus, SubscriptionStatus
from billfold.wallet.models import HELD_SQL, UsageHold

if TYPE_CHECKING:
    from billfold.services import Services

JOB_KIND = "subscriptions.expire_credits"
_GRANTS_TABLE = cast(Table, CreditGrant.__table__)
_INSERT_GRANT = insert(_GRANTS_TABLE)
GRANTS = ledger.SUBSCRIPTION_GRANTS


def grant(
    session: Session,
    subscription: Subscription,
    *,
    amount_micros: int,
    expires_at: datetime,
    description: str,
    carried_micros: int = 0,
) -> str | None:
    """Credit the wallet's subscription bucket until `expires_at` (in the caller's txn);
    the grant's id (None: nothing to grant).
    `carried_micros` (at most the amount) of it is already in usage holds, carried over
    from grants that ended (a reset): the grant covers it, the bucket gets the rest."""
    if amount_micros <= 0:
        return None
    granted = new_grant(
        subscription,
        amount_micros=amount_micros,
        expires_at=expires_at,
        description=description,
        carried_micros=carried_micros,
    )
    # Written by the table's INSERT (the row is never loaded into the session: nothing in
    # this transaction changes it; what reads it later selects it).
    session.execute(_INSERT_GRANT, granted.row)
    if granted.entry is not None:
        ledger.post_entry(session, granted.entry)
    schedule_expiry(session, granted.row["account_id"], granted.row["id"], expires_at)
    return str(granted.row["id"])


@dataclass(frozen=True)
class Granted:
    """A grant's row, its ledger transaction (None: all of it carried in holds) and its
    expiry's job, to write (`grant` writes one; `write_grants` many)."""

    row: dict[str, Any]
    entry: ledger.Entry | None
    expiry: jobs.NewJob


def new_grant(
    subscription: Subscription,
    *,
    amount_micros: int,
    expires_at: datetime,
    description: str,
    carried_micros: int = 0,
) -> Granted:
    """What `grant` writes for a grant of `amount_micros` (> 0)."""
    assert amount_micros > 0 and 0 <= carried_micros <= amount_micros, (
        amount_micros,
        carried_micros,
    )
    meta: dict[str, Any] = {"plan_id": subscription.plan_id}
    if carried_micros:
        meta["carried_in_holds_micros"] = carried_micros
    grant_id = new_id("cg")
    row = {
        "id": grant_id,
        "account_id": subscription.account_id,
        "subscription_id": subscription.id,
        "amount_micros": amount_micros,
        "expired_micros": 0,
        "status": GrantStatus.ACTIVE.value,
        "granted_at": now(),
        "expires_at": expires_at,
        "meta": meta,
    }
    posted = amount_micros - carried_micros
    entry = (
        ledger.Entry(
            account_id=subscription.account_id,
            kind="subscription_credit_grant",
            usecase="subscription_credits",
            description=description,
            reference=f"grant:{grant_id}",
            postings=[
                ledger.Posting(ledger.wallet_account("subscription"), posted),
                ledger.Posting(GRANTS, -posted),
            ],
            meta={
                "subscription_id": subscription.id,
                "grant_id": grant_id,
                "expires_at": expires_at.isoformat(),
            },
        )
        if posted
        else None
    )
    return Granted(row, entry, _expiry(subscription.account_id, grant_id, expires_at))


def write_grants(session: Session, granted: list[Granted]) -> None:
    """The rows and expiry jobs of new grants, by one multi-row INSERT each (their ledger
    transactions are the caller's to post: `ledger.post_many`)."""
    if granted:
        session.execute(_INSERT_GRANT, [new.row for new in granted])
        jobs.enqueue_new(session, [new.expiry for new in granted])


def _expiry(account_id: str, grant_id: str, expires_at: datetime) -> jobs.NewJob:
    return jobs.NewJob(
        kind=JOB_KIND,
        account_id=account_id,
        payload={"account_id": account_id},
        run_at=expires_at,
        dedupe_key=f"expire-credits:{grant_id}:{expires_at.isoformat()}",
    )


def schedule_expiry(session: Session, account_id: str, grant_id: str, expires_at: datetime) -> None:
    jobs.enqueue_job(session, _expiry(account_id, grant_id, expires_at))


def active_grants(session: Session, account_id: str) -> list[CreditGrant]:
    return list(session.scalars(_active(CreditGrant.account_id == account_id)))


def _active(accounts: ColumnElement[bool]) -> Select[CreditGrant]:
    return (
        select(CreditGrant)
        .where(accounts, CreditGrant.status == GrantStatus.ACTIVE)
        .order_by(CreditGrant.expires_at, CreditGrant.id)
    )


def spent_of_live_grants(session: Session, subscription: Subscription) -> tuple[int, int]:
    """(granted, spent) of the subscription's live grants, by the spending model above:
    the bucket's credit belongs to the latest-expiring grants, what is missing was spent
    from the earliest. Credit usage holds keep (not yet marked expired) is unspent until
    a capture spends it. Locks the wallet."""
    bucket = ledger.lock_wallet(session, subscription.account_id).subscription_micros
    bucket += _held(_holds_keeping_included_credit(session, subscription.account_id))
    granted = spent = 0
    for row in reversed(active_grants(session, subscription.account_id)):  # latest first
        unspent = max(0, min(row.amount_micros, bucket))
        bucket -= unspent
        if row.subscription_id == subscription.id:
            granted += row.amount_micros
            spent += row.amount_micros - unspent
    return granted, spent


def expire_due(session: Session, account_id: str, *, count_held: bool = True) -> int:
    """Expire every due grant of the account (paused subscriptions' excepted), in expiry
    order; the micros taken back now.

    Usage holds keep included credit out of the bucket, taken as any spending is, from
    the earliest-expiring grants. So the unspent part of an expiring grant is counted
    with what holds keep (`held`), which is that grant's first: the part in the bucket
    is taken back now; the part in holds is marked on them (`subscription_expired_micros`)
    and expires when they give it back (what a capture does not spend of it). Without
    `count_held` (a reset, whose new grant carries the held credit on), held credit is
    left to the caller."""
    return expire_due_many(session, [account_id], count_held=count_held)[account_id]


def expire_due_many(
    session: Session, account_ids: list[str], *, count_held: bool = True
) -> dict[str, int]:
    """`expire_due` for several accounts in one transaction (what each took back): their
    wallets locked in account order first (before the holds: the lock order), then their
    holds, grants and paused subscriptions read with one statement each."""
    wallets = ledger.lock_wallets(session, account_ids)
    ids = list(wallets)
    holding: dict[str, list[UsageHold]] = {account_id: [] for account_id in ids}
    if count_held:
        for hold in session.scalars(_keeping_included_credit(UsageHold.account_id.in_(ids))):
            holding[hold.account_id].append(hold)
    live: dict[str, list[CreditGrant]] = {account_id: [] for account_id in ids}
    for row in session.scalars(_active(CreditGrant.account_id.in_(ids))):
        live[row.account_id].append(row)
    paused = set(
        session.scalars(
            select(Subscription.id).where(
                Subscription.account_id.in_(ids),
                Subscription.status == SubscriptionStatus.PAUSED,
            )
        )
    )
    expiries: list[ledger.Entry] = []
    taken = {
        account_id: _expire(
            wallets[account_id], holding[account_id], live[account_id], paused, expiries
        )
        for account_id in ids
    }
    session.flush()  # the grants and holds (their wallets are locked already)
    ledger.post_many(session, expiries)
    return taken


def _expire(
    wallet: Wallet,
    holding: list[UsageHold],
    live: list[CreditGrant],
    paused: set[str],
    expiries: list[ledger.Entry],
) -> int:
    """`expire_due` of one account, whose wallet is locked: `holding` its holds keeping
    included credit, `live` its active grants in expiry order, `paused` subscriptions;
    the ledger transactions of what expires from the bucket are added to `expiries`, for
    the caller to post."""
    account_id = wallet.account_id
    bucket = wallet.subscription_micros
    held = _held(holding)
    current = now()
    taken = 0
    for row in list(live):
        if row.expires_at > current or row.subscription_id in paused:
            continue
        live.remove(row)
        others = sum(other.amount_micros for other in live)
        unspent = max(0, min(row.amount_micros, bucket + held - others))
        in_holds = min(unspent, held)
        if in_holds:
            _mark_held_credit_expired(holding, in_holds)
            held -= in_holds
            row.meta = {**(row.meta or {}), "held_at_expiry_micros": in_holds}
        unspent -= in_holds
        if unspent:
            expiries.append(
                ledger.included_credit_expiry(
                    account_id=account_id,
                    amount_micros=unspent,
                    description="Included credits expired at the end of their period",
                    reference=f"expire:{row.id}",
                    meta={"subscription_id": row.subscription_id, "grant_id": row.id},
                )
            )
            bucket -= unspent
            taken += unspent
        row.status = GrantStatus.EXPIRED
        row.expired_micros = unspent
        row.expired_at = current
    return taken


def _holds_keeping_included_credit(session: Session, account_id: str) -> list[UsageHold]:
    """The account's held holds with included credit not yet marked expired, oldest first
    (the caller holds the wallet's lock, which every change of a hold takes first)."""
    return list(session.scalars(_keeping_included_credit(UsageHold.account_id == account_id)))


def _keeping_included_credit(accounts: ColumnElement[bool]) -> Select[UsageHold]:
    return (
        select(UsageHold)
        .where(
            accounts,
            UsageHold.status == HELD_SQL,
            UsageHold.subscription_micros > UsageHold.subscription_expired_micros,
        )
        .order_by(UsageHold.created_at, UsageHold.id)
        .execution_options(populate_existing=True)
    )


def refuse_while_held(session: Session, subscription: Subscription) -> None:
    """409 while usage holds keep included credit of the account (the caller holds the
    wallet's lock): ending a period early (cancel now, reset) prorates its credits as
    spent or not, and a hold's credit is neither until it is captured or released."""
    held = _held(_holds_keeping_included_credit(session, subscription.account_id))
    if held:
        raise Conflict(
            "Usage holds keep some of this subscription's included credits: try again once "
            "they are captured or released.",
            code=ErrorCode.SUBSCRIPTION_CREDITS_HELD,
            details={"subscription_id": subscription.id, "held": from_micros(held)},
        )


def carry_held(session: Session, account_id: str, *, into: int) -> int:
    """Included credit usage holds keep (not expired) goes on into a new grant of `into`
    micros, up to that; what it cannot take is marked expired on the holds. How much the
    grant carries (the caller holds the wallet's lock)."""
    holding = _holds_keeping_included_credit(session, account_id)
    held = _held(holding)
    carried = min(held, max(0, into))
    if held > carried:
        _mark_held_credit_expired(holding, held - carried)
    return carried


def _held(holding: list[UsageHold]) -> int:
    """The included credit the holds keep and that has not expired."""
    return sum(hold.subscription_micros - hold.subscription_expired_micros for hold in holding)


def _mark_held_credit_expired(holding: list[UsageHold], amount: int) -> None:
    """Mark `amount` of the included credit the holds keep as expired, oldest hold first."""
    for hold in holding:
        take = min(amount, hold.subscription_micros - hold.subscription_expired_micros)
        hold.subscription_expired_micros += take
        amount -= take
    assert amount == 0, "more marked expired than the holds keep"


def expire_subscription_grants_now(
    session: Session, subscription: Subscription, *, count_held: bool = True
) -> int:
    """End a subscription's grants now (cancellation, a new cycle; see `expire_due`)."""
    ledger.lock_wallet(session, subscription.account_id)  # the wallet before its grants
    current = now()
    for row in active_grants(session, subscription.account_id):
        if row.subscription_id == subscription.id and row.expires_at > current:
            row.expires_at = current
    session.flush()
    return expire_due(session, subscription.account_id, count_held=count_held)


def shift_grants(session: Session, subscription: Subscription, by: timedelta) -> None:
    """Move a resumed subscription's live grants' expiry by the paused time."""
    ledger.lock_wallet(session, subscription.account_id)  # the wallet before its grants
    for row in active_grants(session, subscription.account_id):
        if row.subscription_id == subscription.id:
            row.expires_at = row.expires_at + by
            schedule_expiry(session, row.account_id, row.id, row.expires_at)
    session.flush()


def run_expiry(services: Services, job: ClaimedJob) -> None:
    with services.database.transaction() as session:
        expire_due(session, str(job.payload["account_id"]))


def prepare_expiries(services: Services, jobs: list[ClaimedJob]) -> dict[int, Callable[[], object]]:
    """The expiry jobs a worker claimed together, done in one transaction (`expire_due_many`);
    nothing is left of each. If it fails, the worker runs each job alone."""
    with services.database.transaction() as session:
        expire_due_many(session, [str(job.payload["account_id"]) for job in jobs])
    return {job.id: _nothing_left for job in jobs}


def _nothing_left() -> None:
    return None
