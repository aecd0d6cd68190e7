"""Coupons: validate, and redeem exactly once per account and within the limit.

A redemption is reserved first, in one transaction: a conditional UPDATE takes one of
the remaining redemptions (so two accounts racing for the last one cannot both win)
and the (coupon, account) unique constraint refuses a second one by the same account.
A purchase coupon then charges the card, as a payment attempt written with the
reservation (`billfold.payments.attempts`): its success grants the bonus, its failure
(declined, or never charged, as the payment janitor finds) gives the reservation back;
a janitor queued with the reservation releases one whose attempt was never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.coupons.models import Coupon, CouponRedemption
from billfold.db import Database, insert_or_ignore
from billfold.errors import BillfoldError, Conflict, ErrorCode, InvalidRequest
from billfold.ids import new_id
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ledger import service as ledger
from billfold.ledger.models import Wallet
from billfold.money import basis_points_to_percent, from_micros, share_of
from billfold.payments import attempts
from billfold.payments import service as payments
from billfold.payments.models import AttemptPurpose
from billfold.processors.base import Processor
from billfold.wallet import funding
from billfold.webhooks import service as webhooks

if TYPE_CHECKING:
    from billfold.services import Services


RELEASE_JOB = "coupons.release_reservation"
# Past the payment janitor's (payments.attempts.STALE_AFTER), with room to spare.
RESERVATION_TIMEOUT = timedelta(minutes=15)
PURCHASE_KINDS = ("bonus_percent", "bonus_fixed")


class CouponError(BillfoldError):
    """A coupon that cannot be used; `code` says why (validate reports it as data)."""


def normalize_code(code: str) -> str:
    return code.strip().upper()


def find(session: Session, code: str) -> Coupon:
    coupon = session.scalars(select(Coupon).where(Coupon.code == normalize_code(code))).first()
    if coupon is None:
        raise CouponError("No coupon with this code.", code=ErrorCode.COUPON_NOT_FOUND)
    return coupon


def bonus_micros(coupon: Coupon, purchase_micros: int) -> int:
    if coupon.kind == "bonus_fixed":
        return coupon.amount_micros or 0
    if coupon.kind == "bonus_percent":
        # Round down to the micro: a bonus never exceeds its stated percentage.
        return share_of(purchase_micros, coupon.percent_basis_points or 0)
    return 0


def check_usable(
    session: Session, coupon: Coupon, *, account_id: str, purchase_micros: int | None
) -> int:
    """Raise the reason a coupon cannot be used now; else the credit it would grant."""
    currency = session.scalar(select(Wallet.currency).where(Wallet.account_id == account_id))
    if currency is not None and coupon.currency != currency:
        raise CouponError(
            f"This coupon is in {coupon.currency}; this account pays in {currency}.",
            code=ErrorCode.CURRENCY_MISMATCH,
            details={"coupon_currency": coupon.currency, "currency": currency},
        )
    current = now()
    if coupon.status != "active" or (coupon.valid_until and coupon.valid_until <= current):
        raise CouponError("This coupon has expired.", code=ErrorCode.COUPON_EXPIRED)
    if coupon.valid_from and coupon.valid_from > current:
        raise CouponError(
            "This coupon is not valid yet.",
            code=ErrorCode.COUPON_NOT_YET_VALID,
            details={"valid_from": coupon.valid_from.isoformat()},
        )
    redeemed = session.scalars(
        select(CouponRedemption.id).where(
            CouponRedemption.coupon_id == coupon.id, CouponRedemption.account_id == account_id
        )
    ).first()
    if redeemed is not None:
        raise CouponError(
            "This account has already redeemed this coupon.",
            code=ErrorCode.COUPON_ALREADY_REDEEMED,
        )
    if coupon.max_redemptions is not None and coupon.redemptions >= coupon.max_redemptions:
        raise CouponError("This coupon has been fully redeemed.", code=ErrorCode.COUPON_EXHAUSTED)
    if coupon.kind in PURCHASE_KINDS:
        if purchase_micros is None or purchase_micros < coupon.min_purchase_micros:
            raise CouponError(
                f"This coupon needs a purchase of at least "
                f"{from_micros(coupon.min_purchase_micros)} {coupon.currency}.",
                code=ErrorCode.PURCHASE_BELOW_MINIMUM,
                details={"min_purchase": from_micros(coupon.min_purchase_micros)},
            )
        return bonus_micros(coupon, purchase_micros)
    return coupon.amount_micros or 0


def coupon_view(coupon: Coupon) -> dict[str, Any]:
    remaining = (
        None
        if coupon.max_redemptions is None
        else max(coupon.max_redemptions - coupon.redemptions, 0)
    )
    return {
        "id": coupon.id,
        "code": coupon.code,
        "kind": coupon.kind,
        "credit_amount": from_micros(coupon.amount_micros or 0)
        if coupon.kind == "credit"
        else None,
        "bonus_amount": (
            from_micros(coupon.amount_micros or 0) if coupon.kind == "bonus_fixed" else None
        ),
        "bonus_percent": (
            basis_points_to_percent(coupon.percent_basis_points or 0)
            if coupon.kind == "bonus_percent"
            else None
        ),
        "min_purchase": from_micros(coupon.min_purchase_micros),
        "currency": coupon.currency,
        "valid_from": coupon.valid_from,
        "expires_at": coupon.valid_until,
        "max_redemptions": coupon.max_redemptions,
        "remaining_redemptions": remaining,
        "status": coupon.status,
    }


def validate(
    session: Session, *, account_id: str, code: str, purchase_micros: int | None
) -> dict[str, Any]:
    """Validation answers as data: {valid: true, …} or {valid: false, error: {code, message}}."""
    try:
        coupon = find(session, code)
        credit = check_usable(
            session, coupon, account_id=account_id, purchase_micros=purchase_micros
        )
    except CouponError as exc:
        return {
            "valid": False,
            "code": normalize_code(code),
            "error": {"code": exc.code.value, "message": exc.message, "details": exc.details},
        }
    view = coupon_view(coupon)
    view.update(valid=True, code=coupon.code, error=None)
    if coupon.kind in PURCHASE_KINDS:
        view["bonus_amount"] = from_micros(credit)
        view["purchase_amount"] = from_micros(purchase_micros or 0)
        view["total_credit"] = from_micros((purchase_micros or 0) + credit)
    return view


def create(session: Session, *, values: dict[str, Any]) -> Coupon:
    coupon_id = new_id("cpn")
    inserted = insert_or_ignore(
        session,
        Coupon,
        {
            **values,
            "id": coupon_id,
            "code": normalize_code(values["code"]),
            "redemptions": 0,
            "status": "active",
            "created_at": now(),
        },
        ["code"],
    )
    if not inserted:
        raise Conflict("A coupon with this code exists.", code=ErrorCode.COUPON_CODE_TAKEN)
    coupon = session.get(Coupon, coupon_id)
    assert coupon is not None
    return coupon


def archive(session: Session, *, code: str) -> Coupon:
    coupon = find(session, code)
    coupon.status = "archived"
    return coupon


@dataclass(frozen=True)
class Redeemed:
    redemption: CouponRedemption
    coupon: Coupon
    balance_micros: int


def _reserve(
    session: Session, coupon: Coupon, *, account_id: str, purchase_micros: int | None
) -> CouponRedemption:
    credit = check_usable(session, coupon, account_id=account_id, purchase_micros=purchase_micros)
    current = now()
    taken = session.execute(
        update(Coupon)
        .where(
            Coupon.id == coupon.id,
            Coupon.status == "active",
            or_(Coupon.max_redemptions.is_(None), Coupon.redemptions < Coupon.max_redemptions),
            or_(Coupon.valid_until.is_(None), Coupon.valid_until > current),
        )
        .values(redemptions=Coupon.redemptions + 1)
    ).rowcount  # type: ignore[attr-defined]
    if not taken:
        raise CouponError("This coupon has been fully redeemed.", code=ErrorCode.COUPON_EXHAUSTED)
    redemption = CouponRedemption(
        id=new_id("red"),
        coupon_id=coupon.id,
        account_id=account_id,
        status="pending" if coupon.kind in PURCHASE_KINDS else "redeemed",
        credit_micros=credit,
        purchase_micros=(purchase_micros or 0) if coupon.kind in PURCHASE_KINDS else 0,
        created_at=current,
    )
    session.add(redemption)
    try:
        session.flush()
    except IntegrityError:
        raise CouponError(
            "This account has already redeemed this coupon.",
            code=ErrorCode.COUPON_ALREADY_REDEEMED,
        ) from None
    return redemption


def _grant(session: Session, redemption: CouponRedemption, coupon: Coupon) -> None:
    webhooks.emit(
        session,
        type="coupon.redeemed",
        account_id=redemption.account_id,
        data={
            "account_id": redemption.account_id,
            "code": coupon.code,
            "kind": coupon.kind,
            "credit_amount": from_micros(redemption.credit_micros),
            "redemption_id": redemption.id,
        },
    )
    if redemption.credit_micros:
        ledger.post(
            session,
            account_id=redemption.account_id,
            kind="coupon_credit",
            usecase="coupon",
            description=f"Coupon {coupon.code}",
            reference=f"coupon:{redemption.id}",
            # A purchase bonus names its purchase: refunding the purchase takes it back.
            payment_id=redemption.payment_id,
            postings=[
                ledger.Posting(ledger.wallet_account("promotional"), redemption.credit_micros),
                ledger.Posting(ledger.OPERATOR_PROMOTIONS, -redemption.credit_micros),
            ],
            meta={"coupon": coupon.code},
        )


def redeem(
    database: Database,
    processor: Processor,
    *,
    account_id: str,
    code: str,
    purchase_micros: int | None,
    payment_method_id: str | None,
    idempotency_key: str | None,
) -> Redeemed:
    with database.transaction() as session:
        coupon = find(session, code)
        if coupon.kind not in PURCHASE_KINDS:
            redemption = _reserve(session, coupon, account_id=account_id, purchase_micros=None)
            _grant(session, redemption, coupon)
            wallet = session.get(Wallet, account_id, populate_existing=True)
            assert wallet is not None
            return Redeemed(redemption, coupon, wallet.balance_micros)
        if purchase_micros is None:
            raise InvalidRequest(
                "purchase_amount is required for this coupon: it adds a bonus to a card purchase.",
                details={"field": "purchase_amount"},
            )
        if (
            payment_method_id is None
            and payments.default_payment_method(session, account_id) is None
        ):
            raise payments.PaymentMethodRequired(
                "Give a payment_method_id: this account has no default card on file."
            )
        reserved = reserve_purchase(
            session,
            coupon,
            account_id=account_id,
            purchase_micros=purchase_micros,
            idempotency_key=idempotency_key,
        )
        redemption = reserved.redemption
        # The purchase's charge, written with the reservation: its outcome finishes the
        # redemption or gives it back (see _on_purchase_paid, _on_purchase_failed).
        attempt = funding.begin_funding(
            session,
            account_id=account_id,
            amount_micros=purchase_micros,
            card=funding.card_to_charge(session, account_id, payment_method_id),
            idempotency_key=reserved.funding_key,
            purpose="coupon_purchase",
            context={"coupon_redemption_id": redemption.id},
        )
    funding.charge_funding(database, processor, attempt)
    with database.read() as session:
        row = session.get(CouponRedemption, redemption.id)
        assert row is not None
        wallet = session.get(Wallet, account_id)
        assert wallet is not None
        return Redeemed(row, coupon, wallet.balance_micros)


@dataclass(frozen=True)
class PurchaseReservation:
    redemption: CouponRedemption
    funding_key: str  # the purchase's funding idempotency key
    processor_key: str  # its charge's key at the processor (its attempt's operation)


def reserve_purchase(
    session: Session,
    coupon: Coupon,
    *,
    account_id: str,
    purchase_micros: int,
    idempotency_key: str | None,
) -> PurchaseReservation:
    """Reserve a purchase coupon's redemption (pending until its charge is recorded), with
    the janitor that releases it if it is ever left behind."""
    redemption = _reserve(session, coupon, account_id=account_id, purchase_micros=purchase_micros)
    funding_key = f"coupon:{redemption.id}:{idempotency_key or ''}"
    processor_key = funding.funding_key(account_id, funding_key)
    _watch_reservation(session, redemption.id, processor_key)
    return PurchaseReservation(redemption, funding_key, processor_key)


def _watch_reservation(session: Session, redemption_id: str, processor_key: str) -> None:
    """Queue, with the reservation, the janitor that releases it if it is ever left pending
    (a process that died between reserving and writing the charge's attempt)."""
    jobs.enqueue(
        session,
        kind=RELEASE_JOB,
        payload={"redemption_id": redemption_id, "processor_key": processor_key},
        run_at=now() + RESERVATION_TIMEOUT,
    )


def run_release(services: Services, job: ClaimedJob) -> None:
    """The janitor: a reservation still pending after its timeout is released, unless its
    charge's attempt is still open (the payment janitor settles that one, and the outcome
    finishes or releases the reservation)."""
    redemption_id = str(job.payload["redemption_id"])
    processor_key = str(job.payload["processor_key"])
    database = services.database
    with database.read() as session:
        row = session.get(CouponRedemption, redemption_id)
        if row is None or row.status != "pending":
            return
        attempt = attempts.latest(session, processor_key)
    with database.transaction() as session:
        if attempt is not None and not attempt.state.settled:  # look again later
            _watch_reservation(session, redemption_id, processor_key)
        elif attempt is not None and attempt.succeeded and attempt.payment_id:
            finish_redemption(session, redemption_id, attempt.payment_id)
        else:
            release_redemption(session, redemption_id)


def finish_redemption(session: Session, redemption_id: str, payment_id: str) -> None:
    """Grant a purchase coupon's bonus, in the transaction that credits its purchase."""
    row = session.get(CouponRedemption, redemption_id, with_for_update=True)
    if row is None or row.status != "pending":
        return
    coupon = session.get(Coupon, row.coupon_id)
    assert coupon is not None
    row.status = "redeemed"
    row.payment_id = payment_id
    _grant(session, row, coupon)


def release_redemption(session: Session, redemption_id: str) -> None:
    """Give back a reservation whose purchase was not charged."""
    coupon_id = session.execute(
        delete(CouponRedemption)
        .where(CouponRedemption.id == redemption_id, CouponRedemption.status == "pending")
        .returning(CouponRedemption.coupon_id)
    ).scalar_one_or_none()
    if coupon_id is not None:
        session.execute(
            update(Coupon).where(Coupon.id == coupon_id).values(redemptions=Coupon.redemptions - 1)
        )


def redemption_view(result: Redeemed) -> dict[str, Any]:
    redemption = result.redemption
    return {
        "redemption_id": redemption.id,
        "code": result.coupon.code,
        "kind": result.coupon.kind,
        "credit_amount": from_micros(redemption.credit_micros),
        "purchase_amount": from_micros(redemption.purchase_micros),
        "payment_intent_id": redemption.payment_id,
        "balance": from_micros(result.balance_micros),
        "redeemed_at": redemption.created_at,
    }


@attempts.on_success(AttemptPurpose.COUPON_PURCHASE).subscribe
def _on_purchase_paid(session: Session, event: attempts.Settled) -> str:
    """The purchase is credited, then its bonus granted, in the transaction recording it."""
    assert event.payment is not None
    transaction_id = funding.credit_card_funding(session, event)
    finish_redemption(session, str(event.attempt.context["coupon_redemption_id"]), event.payment.id)
    return transaction_id


@attempts.on_failure(AttemptPurpose.COUPON_PURCHASE).subscribe
def _on_purchase_failed(session: Session, event: attempts.Settled) -> None:
    """Declined, or never charged: the redemption goes back to the coupon."""
    release_redemption(session, str(event.attempt.context["coupon_redemption_id"]))
