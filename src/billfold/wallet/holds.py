"""Usage holds: authorize an amount now, capture what the usage really cost later.

A hold is a ledger movement, so the usage-charge hot path knows nothing about it:

- Creating a hold posts `usage_hold` (a debit): the amount leaves the wallet's buckets in
  spending order (`ledger.spend_split`) for `holds:usage`, a ledger account off the
  wallet. The balance (what usage charges and withdrawals can spend) drops by the hold,
  and the hold row records what it took from each bucket.
- Releasing it (on request, or at its expiry) posts `usage_hold_release` (a credit): all
  of it goes back from `holds:usage` to the buckets it came from.
- Capturing `c` of it posts, in the same database transaction, that release and then an
  ordinary `usage_charge` of `c` (a debit to `revenue:usage`, with the hold's usecase)
  from the hold's own buckets, taken in spending order, so the unused rest stays in the
  buckets spent last (purchased credit first, then promotional, then subscription). Two
  ledger transactions rather than one: a transaction's type and amount are its net
  effect on the wallet, and one posting could only show as a credit of the unused rest,
  where invoices, the books and the agent's history expect a usage charge of `c`.

Included (subscription) credit a hold keeps while its grant expires is marked on the
hold by the grant's expiry (`subscription_expired_micros`): when the hold gives it back,
what the capture did not spend of it expires at once (`subscription_credit_expiry`), so
held credit never outlives its period. A capture of such a hold takes the careful path.

Every change of a hold's status is one conditional UPDATE from `held` (and, but for an
expiry, from before `expires_at`), taken after the wallet row is locked (the lock order
of every wallet write: wallet, then hold): of a concurrent capture, release and expiry
exactly one wins and the others answer 409 `hold_not_active`. A hold past its expiry
counts as expired at once; the sweep (or the next capture, release or read of it) gives
its money back.

The sweep: every worker process checks each second (`schedule_sweep`, one indexed read)
for held holds past their expiry and, if it finds one, queues the one sweep job
(`SWEEP_JOB`, a dedupe key: never two at once), which expires them in chunks. Creating a
hold queues nothing, so the usage path writes no job row per hold. A hold of an account
on a sandbox test clock is the exception: its expiry is a job at `expires_at` on the
clock's time (`EXPIRE_JOB`), which only the clock's advance runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billfold.accounts.models import Account
from billfold.clock import current_test_clock, now, real_time, wall_now
from billfold.errors import Conflict, ErrorCode, InsufficientFunds, NotFound
from billfold.ids import new_id
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ledger import service as ledger
from billfold.ledger.models import BUCKETS, LedgerTransaction, Wallet
from billfold.money import from_micros
from billfold.wallet import auto_funding
from billfold.wallet.models import HELD_SQL, HoldStatus, UsageHold

if TYPE_CHECKING:
    from billfold.services import Services

EXPIRE_JOB = "wallet.expire_usage_hold"  # one hold's, on a test clock
SWEEP_JOB = "wallet.sweep_usage_holds"
SWEEP_CHECK_SECONDS = 1.0  # how often each worker process looks for expired holds
SWEEP_CHUNK = 100
SWEEP_BUDGET = jobs.LEASE * 0.8  # per run, well inside the job's lease
HOLD_KIND = "usage_hold"
RELEASE_KIND = "usage_hold_release"
CHARGE_KIND = "usage_charge"  # a capture is a usage charge like any other


@dataclass(frozen=True)
class Captured:
    hold: UsageHold
    charge: LedgerTransaction


def held_micros(session: Session, account_id: str) -> int:
    """What the account's active holds keep out of its balance."""
    total = session.scalar(
        select(func.sum(UsageHold.amount_micros)).where(
            UsageHold.account_id == account_id, UsageHold.status == HELD_SQL
        )
    )
    return int(total or 0)


def effective_status(hold: UsageHold) -> str:
    """A hold past its expiry is expired, whether or not its money went back yet."""
    if hold.status == HoldStatus.HELD and hold.expires_at <= now():
        return HoldStatus.EXPIRED
    return hold.status


def hold_view(hold: UsageHold, *, balance_after_micros: int | None = None) -> dict[str, Any]:
    return {
        "id": hold.id,
        "hold_id": hold.id,
        "account_id": hold.account_id,
        "amount": from_micros(hold.amount_micros),
        "captured_amount": from_micros(hold.captured_micros),
        "usecase": hold.usecase,
        "description": hold.description,
        "metadata": hold.meta or {},
        "status": effective_status(hold),
        "breakdown": {bucket: from_micros(_split(hold)[bucket]) for bucket in BUCKETS},
        "expires_at": hold.expires_at,
        "created_at": hold.created_at,
        "resolved_at": hold.resolved_at,
        "hold_transaction_id": hold.hold_transaction_id,
        "release_transaction_id": hold.release_transaction_id,
        "charge_transaction_id": hold.charge_transaction_id,
        "balance_after": (
            from_micros(balance_after_micros) if balance_after_micros is not None else None
        ),
    }


def create(
    session: Session,
    *,
    account_id: str,
    amount_micros: int,
    usecase: str,
    description: str | None,
    metadata: dict[str, Any] | None,
    ttl: timedelta,
) -> tuple[UsageHold, LedgerTransaction]:
    """Reserve `amount_micros` of the wallet (402 if the balance cannot cover it), and
    schedule the hold's expiry."""
    wallet = ledger.lock_wallet(session, account_id)
    if wallet.balance_micros < amount_micros:
        raise InsufficientFunds(
            "The wallet balance cannot cover this hold.",
            details={
                "balance": from_micros(wallet.balance_micros),
                "amount": from_micros(amount_micros),
            },
        )
    hold_id = new_id("hold")
    taken = ledger.spend_split(_buckets(wallet), amount_micros)
    txn = ledger.post(
        session,
        account_id=account_id,
        kind=HOLD_KIND,
        usecase=usecase,
        description=description,
        postings=[*taken, ledger.Posting(ledger.HOLDS_USAGE, amount_micros)],
        reference=f"hold:{hold_id}",
        meta={**(metadata or {}), "hold_id": hold_id},
    )
    split = {p.ledger_account.removeprefix(ledger.WALLET_PREFIX): -p.amount_micros for p in taken}
    hold = UsageHold(
        id=hold_id,
        account_id=account_id,
        amount_micros=amount_micros,
        captured_micros=0,
        subscription_micros=split.get("subscription", 0),
        promotional_micros=split.get("promotional", 0),
        purchased_micros=split.get("purchased", 0),
        usecase=usecase,
        description=description,
        meta=metadata,
        status=HoldStatus.HELD,
        expires_at=now() + ttl,
        created_at=now(),
        hold_transaction_id=txn.id,
    )
    session.add(hold)
    session.flush()
    if current_test_clock() is not None:  # on real time, the sweep expires it
        jobs.enqueue(
            session,
            kind=EXPIRE_JOB,
            account_id=account_id,
            payload={"hold_id": hold_id},
            run_at=hold.expires_at,
        )
    auto_funding.after_debit(
        session, locked_wallet=wallet, balance_after_micros=txn.balance_after_micros
    )
    return hold, txn


def get(session: Session, *, hold_id: str, account_id: str | None = None) -> UsageHold:
    """The hold (of `account_id`, when given); 404 otherwise."""
    hold = session.get(UsageHold, hold_id, populate_existing=True)
    if hold is None or (account_id is not None and hold.account_id != account_id):
        raise NotFound(
            "No such usage hold.", code=ErrorCode.HOLD_NOT_FOUND, details={"hold_id": hold_id}
        )
    return hold


def capture(
    session: Session, *, hold_id: str, account_id: str | None, amount_micros: int | None
) -> Captured:
    """Charge `amount_micros` of the hold (all of it if None) as usage, and give the rest
    back; 409 if the hold is no longer held or the amount is larger than the hold."""
    hold = get(session, hold_id=hold_id, account_id=account_id)
    _require_active(hold)
    captured = hold.amount_micros if amount_micros is None else amount_micros
    if captured > hold.amount_micros:
        raise Conflict(
            "The capture is larger than the hold.",
            code=ErrorCode.HOLD_AMOUNT_EXCEEDED,
            details={
                "hold_id": hold.id,
                "held": from_micros(hold.amount_micros),
                "amount": from_micros(captured),
            },
        )
    wallet = ledger.lock_wallet(session, hold.account_id)
    _resolve(session, hold, HoldStatus.CAPTURED, captured_micros=captured)
    returned = _give_back(session, hold)
    split = _split(hold)
    spent = []
    remaining = captured
    for bucket in BUCKETS:  # the hold's own buckets, in spending order
        take = min(split[bucket], remaining)
        if take:
            spent.append(ledger.Posting(ledger.wallet_account(bucket), -take))
            remaining -= take
    charge = ledger.post(
        session,
        account_id=hold.account_id,
        kind=CHARGE_KIND,
        usecase=hold.usecase,
        description=hold.description,
        postings=[*spent, ledger.Posting(ledger.REVENUE_USAGE, captured)],
        reference=f"hold_capture:{hold.id}",
        meta={**(hold.meta or {}), "hold_id": hold.id},
    )
    _keep_auto_funding_disarmed(session, wallet, balance_after_micros=charge.balance_after_micros)
    _expire_held_credit(session, hold, captured_micros=captured)
    session.execute(
        update(UsageHold)
        .where(UsageHold.id == hold.id)
        .values(release_transaction_id=returned.id, charge_transaction_id=charge.id)
        .execution_options(synchronize_session=False)
    )
    return Captured(get(session, hold_id=hold.id), charge)


def release(
    session: Session, *, hold_id: str, account_id: str | None
) -> tuple[UsageHold, LedgerTransaction]:
    """Give the whole hold back to the buckets it came from; 409 if no longer held."""
    hold = get(session, hold_id=hold_id, account_id=account_id)
    _require_active(hold)
    ledger.lock_wallet(session, hold.account_id)
    _resolve(session, hold, HoldStatus.RELEASED)
    txn = _give_back(session, hold)
    _expire_held_credit(session, hold)
    _set_release_transaction(session, hold, txn)
    return get(session, hold_id=hold.id), txn


def expire_if_due(session: Session, hold_id: str) -> bool:
    """Give an expired hold's money back (once: False if it was not due or not held)."""
    hold = session.get(UsageHold, hold_id, populate_existing=True)
    if hold is None or hold.status != HoldStatus.HELD or hold.expires_at > now():
        return False
    ledger.lock_wallet(session, hold.account_id)
    expired = session.execute(
        update(UsageHold)
        .where(
            UsageHold.id == hold.id,
            UsageHold.status == HoldStatus.HELD,
            UsageHold.expires_at <= now(),
        )
        .values(status=HoldStatus.EXPIRED, resolved_at=now())
        .returning(UsageHold.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if expired is None:
        return False
    _set_release_transaction(session, hold, _give_back(session, hold))
    _expire_held_credit(session, hold)
    return True


def run_expiry(services: Services, job: ClaimedJob) -> None:
    """The job scheduled at a hold's expiry (on a test clock, or queued before the sweep):
    a hold still held gives its money back."""
    with services.database.transaction() as session:
        expire_if_due(session, str(job.payload["hold_id"]))


def _due_on_real_time(limit: int) -> Any:
    """The held holds past their expiry on real time, soonest expired first (read through
    the index on status and expiry); holds on a test clock wait for its advance."""
    return (
        select(UsageHold.id)
        .join(Account, Account.id == UsageHold.account_id)
        .where(
            UsageHold.status == HELD_SQL,
            UsageHold.expires_at <= wall_now(),
            Account.test_clock_id.is_(None),
        )
        .order_by(UsageHold.expires_at)
        .limit(limit)
    )


def schedule_sweep(session: Session) -> bool:
    """Queue the sweep if a hold waits for it (a no-op while one is queued or running);
    a job on real time, whatever clock the caller is on."""
    if session.scalar(_due_on_real_time(1)) is None:
        return False
    with real_time():
        return jobs.enqueue(session, kind=SWEEP_JOB, dedupe_key=SWEEP_JOB)


def run_sweep(services: Services, job: ClaimedJob) -> None:
    """The sweep job."""
    sweep(services)


def sweep(services: Services) -> None:
    """Give back the money of every hold past its expiry, a transaction per hold (each an
    `expire_if_due`, so a capture, release or read racing it still finds exactly one
    winner), for at most SWEEP_BUDGET; what is left is found by the next check."""
    stop_at = time.monotonic() + SWEEP_BUDGET.total_seconds()
    while time.monotonic() < stop_at:
        with services.database.read() as session:
            due = list(session.scalars(_due_on_real_time(SWEEP_CHUNK)))
        for hold_id in due:
            with services.database.transaction() as session:
                expire_if_due(session, hold_id)
        if len(due) < SWEEP_CHUNK:
            return


def _require_active(hold: UsageHold) -> None:
    status = effective_status(hold)
    if status != HoldStatus.HELD:
        raise Conflict(
            f"The usage hold is {status}; nothing was moved.",
            code=ErrorCode.HOLD_NOT_ACTIVE,
            details={"hold_id": hold.id, "status": status},
        )


def _resolve(
    session: Session, hold: UsageHold, status: HoldStatus, *, captured_micros: int = 0
) -> None:
    """Move the hold from held (and not yet due) to `status`, or 409: the one decision
    that makes concurrent captures, releases and expiries race safely."""
    won = session.execute(
        update(UsageHold)
        .where(
            UsageHold.id == hold.id,
            UsageHold.status == HoldStatus.HELD,
            UsageHold.expires_at > now(),
        )
        .values(status=status, captured_micros=captured_micros, resolved_at=now())
        .returning(UsageHold.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if won is None:
        _require_active(get(session, hold_id=hold.id))
        raise AssertionError("a held hold refused its conditional update")  # pragma: no cover


def _give_back(session: Session, hold: UsageHold) -> LedgerTransaction:
    """Post the whole hold from holds:usage back to the buckets it was taken from."""
    split = _split(hold)
    postings = [
        ledger.Posting(ledger.wallet_account(bucket), split[bucket])
        for bucket in BUCKETS
        if split[bucket]
    ]
    return ledger.post(
        session,
        account_id=hold.account_id,
        kind=RELEASE_KIND,
        usecase=hold.usecase,
        description=hold.description,
        postings=[*postings, ledger.Posting(ledger.HOLDS_USAGE, -hold.amount_micros)],
        reference=f"hold_release:{hold.id}",
        meta={"hold_id": hold.id},
    )


def _expire_held_credit(session: Session, hold: UsageHold, *, captured_micros: int = 0) -> None:
    """After the give-back: the included credit the hold kept past its grant's expiry
    (`subscription_expired_micros`, read under the wallet's lock: the grant's expiry
    writes it under that lock too) expires now, but for what the capture spent of it (a
    capture spends the hold's included credit first, and that part first)."""
    expired = session.scalar(
        select(UsageHold.subscription_expired_micros).where(UsageHold.id == hold.id)
    )
    spent = min(hold.subscription_micros, captured_micros)
    left = max(0, (expired or 0) - spent)
    if left:
        ledger.expire_included_credit(
            session,
            account_id=hold.account_id,
            amount_micros=left,
            description="Included credits expired at the end of their period, while held",
            reference=f"expire_held:{hold.id}",
            meta={"hold_id": hold.id},
        )


def _set_release_transaction(session: Session, hold: UsageHold, txn: LedgerTransaction) -> None:
    session.execute(
        update(UsageHold)
        .where(UsageHold.id == hold.id)
        .values(release_transaction_id=txn.id)
        .execution_options(synchronize_session=False)
    )


def _keep_auto_funding_disarmed(
    session: Session, locked_wallet: Wallet, *, balance_after_micros: int
) -> None:
    """A capture as a whole is a credit of the unused rest, but its release step on the
    way may lift the balance over the auto-funding threshold and re-arm the rule: undo
    that when the capture ends under the threshold with the rule disarmed before it."""
    threshold = locked_wallet.charge_threshold_micros
    if locked_wallet.auto_funding_armed or threshold is None or balance_after_micros >= threshold:
        return
    session.execute(
        update(Wallet)
        .where(Wallet.account_id == locked_wallet.account_id)
        .values(auto_funding_armed=False)
        .execution_options(synchronize_session=False)
    )


def _split(hold: UsageHold) -> dict[str, int]:
    return {
        "subscription": hold.subscription_micros,
        "promotional": hold.promotional_micros,
        "purchased": hold.purchased_micros,
    }


def _buckets(wallet: Wallet) -> dict[str, int]:
    return {bucket: getattr(wallet, f"{bucket}_micros") for bucket in BUCKETS}
