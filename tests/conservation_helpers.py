"""The conservation invariants of issue 9, observed from outside: what an account holds
and has used against what was paid for it, and whether `withdrawable` is what a
withdrawal returns.

Value received by an account = its wallet balance + what its active usage holds keep out
of it + what it spent on usage + what the operator debited by hand + the money refunded
to its cards (succeeded refunds).
Value paid for it = its succeeded card payments (wallet fundings, payment links, coupon
purchases, charge-amount, subscription invoices) + the promotional value the operator
granted (credit adjustments, credit coupons, and purchase bonuses in proportion to the
part of their purchase that was not refunded). Conservation: received ≤ paid.

How each ledger transaction kind (`kind=` in src/billfold) enters the books:

- wallet_funding, auto_funding, checkout, coupon_purchase, subscription_charge,
  subscription_checkout (a card payment credited as purchased credit): the credit is
  in the balance (received); the money is a succeeded payment (paid).
- subscription_payment (off the wallet: clearing → revenue): its payment is paid; what
  it buys arrives as subscription_credit_grant (the balance: received) or time.
- subscription_credit_grant: in the balance (received), paid for by the invoice.
- subscription_credit_expiry: lowers the balance; neither received nor paid.
- subscription_unused_time: in the balance (received), out of what the invoice paid.
- usage_hold: moves balance into `held` (holds:usage); usage_hold_release moves it back.
  Neither is received nor paid: a captured hold is an ordinary usage_charge.
- usage_charge: received (spent). adjustment: a debit is received (spent), a credit is
  paid (an operator grant). coupon_credit: paid (an operator grant) for a credit
  coupon; for a purchase bonus, only the share of its purchase that was not refunded,
  unless the purchase was refunded at the processor: that refund cannot be refused, so
  what of the bonus Billfold could not take back (spent, or kept out by a usage hold)
  stays granted by the operator's promotions (paid), however much was refunded.
- withdrawal, operator_refund: lower the balance; the money is received as a refund
  once the processor's refund succeeded (Refund rows, not the ledger, say so).
- withdrawal_reversal: a refused refund put back in the balance (nothing returned).
- processor_refund (a refund made at the processor, Stripe's dashboard, reported by a
  webhook): lowers the balance (purchased credit) by at most the refund; its Refund row
  counts the money as received, and the part the wallet could not cover, posted to
  operator:adjustments, is paid (the operator bears what was already spent).

A dispute moves no value: the disputed payment stays paid, but its credit is no longer
withdrawable, so `withdrawable` never exceeds what is left unrefunded of the account's
undisputed refundable card payments.

Any other kind (a claw-back, say) moves the balance, which the books read directly:
a credit of unknown kind counts as received and a debit lowers what was received, so
an unclassified kind can only make the check stricter.

Only read-only SQL: these helpers never write a row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import case, func, select

from billfold.coupons.models import Coupon, CouponRedemption
from billfold.coupons.service import PURCHASE_KINDS
from billfold.ledger.models import LedgerPosting, LedgerTransaction, Wallet
from billfold.ledger.service import HOLDS_USAGE, OPERATOR_ADJUSTMENTS
from billfold.money import to_micros
from billfold.payments.models import Payment, Refund
from billfold.services import Services
from billfold.subscriptions.models import CreditGrant
from billfold.wallet.models import UsageHold
from billfold.wallet.refunds import BONUS_KINDS, REFUNDABLE_PURPOSES
from tests.helpers import Agent, Api, TestClock, assert_error, decimal_json
from tests.subscription_helpers import FAR_EXPIRY

CENT = 10_000  # micros


def micros(value: Any) -> int:
    return to_micros(Decimal(str(value)))


@dataclass(frozen=True)
class Books:
    """One account's value in and out, in micros."""

    account_id: str
    balance: int
    withdrawable: int
    card_paid: int
    returned: int
    usage: int
    debits: int
    credits: int
    coupon_credit: int
    bonus_granted: int
    bonus_kept: Fraction
    bonus_by_redemption: dict[str, int] = field(default_factory=dict)
    coupon_credit_by_redemption: dict[str, int] = field(default_factory=dict)
    succeeded_payments: frozenset[str] = frozenset()
    purchased: int = 0
    operator_borne: int = 0  # processor refunds of credit already spent, borne by the operator
    undisputed_left: int = 0  # unrefunded of the undisputed refundable card payments
    disputed_payments: frozenset[str] = frozenset()
    held: int = 0  # active usage holds, out of the balance
    held_in_ledger: int = 0  # the holds:usage ledger account's sum of postings

    @property
    def received(self) -> int:
        return self.balance + self.held + self.usage + self.debits + self.returned

    @property
    def paid(self) -> Fraction:
        return (
            self.card_paid
            + self.credits
            + self.coupon_credit
            + self.bonus_kept
            + self.operator_borne
        )

    def explain(self) -> str:
        def d(value: int | Fraction) -> str:
            value = Fraction(value)
            return f"{Decimal(value.numerator) / Decimal(value.denominator) / 10**6:.6f}"

        return (
            f"account {self.account_id}: received {d(self.received)} = balance "
            f"{d(self.balance)} + held {d(self.held)} + usage {d(self.usage)} "
            f"+ operator debits {d(self.debits)} "
            f"+ refunded to cards {d(self.returned)}; paid {d(self.paid)} = card payments "
            f"{d(self.card_paid)} + operator credits {d(self.credits)} + credit coupons "
            f"{d(self.coupon_credit)} + purchase bonuses kept {d(self.bonus_kept)} "
            f"(granted {d(self.bonus_granted)}) + processor refunds borne by the operator "
            f"{d(self.operator_borne)}; withdrawable {d(self.withdrawable)} (undisputed "
            f"refundable payments left {d(self.undisputed_left)})"
        )


def new_account(api: Api, *, card: str, clock: TestClock | None = None) -> Agent:
    """An account (on `clock`, or real time) with `card` as its default, through the
    operator's API: created, and given a token without a login (saves a password check)."""
    email = f"conserve-{uuid.uuid4().hex[:12]}@example.com"
    password = "correct horse battery staple"
    body = {"email": email, "password": password}
    if clock is not None:
        body["test_clock_id"] = clock.id
    created = api.admin_post("/accounts", body)
    assert created.status_code == 201, created.text
    account_id = created.json()["data"]["id"]
    token = api.admin_post(f"/accounts/{account_id}/tokens", {"expires_in": "never"})
    assert token.status_code == 201, token.text
    agent = Agent(api, account_id, email, password, token.json()["data"]["access_token"])
    pm = api.tokenize(card, exp_year=FAR_EXPIRY)
    added = agent.post("/billing/payment-methods", {"payment_method_id": pm})
    assert added.status_code == 201, added.text
    return agent


def balance_data(agent: Agent) -> dict[str, Any]:
    response = agent.get("/wallet/balance")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = decimal_json(response)["data"]
    return data


def _sum(session: Any, account_id: str, kind: str, type_: str | None = None) -> int:
    where = [
        LedgerTransaction.account_id == account_id,
        LedgerTransaction.kind == kind,
        LedgerTransaction.status == "succeeded",
    ]
    if type_ is not None:
        where.append(LedgerTransaction.type == type_)
    total = session.scalar(select(func.sum(LedgerTransaction.amount_micros)).where(*where))
    return int(total or 0)


def observe(services: Services, agent: Agent) -> Books:
    """The account's books: the balance and withdrawable as the API shows them, the rest
    from the payments, refunds, coupon and ledger tables (read-only)."""
    shown = balance_data(agent)
    account_id = agent.account_id
    with services.database.read() as session:
        payments = session.execute(
            select(
                Payment.id,
                Payment.amount_micros,
                Payment.refunded_micros,
                Payment.purpose,
                Payment.disputed,
            ).where(Payment.account_id == account_id, Payment.status == "succeeded")
        ).all()
        borne = session.scalar(
            select(func.sum(LedgerPosting.amount_micros))
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(
                LedgerTransaction.account_id == account_id,
                LedgerTransaction.kind == "processor_refund",
                LedgerTransaction.status == "succeeded",
                LedgerPosting.ledger_account == OPERATOR_ADJUSTMENTS,
            )
        )
        returned = session.scalar(
            select(func.sum(Refund.amount_micros)).where(
                Refund.account_id == account_id, Refund.status == "succeeded"
            )
        )
        coupon_txns = session.execute(
            select(LedgerTransaction.reference, LedgerTransaction.amount_micros).where(
                LedgerTransaction.account_id == account_id,
                LedgerTransaction.kind == "coupon_credit",
                LedgerTransaction.type == "credit",
                LedgerTransaction.status == "succeeded",
            )
        ).all()
        redemptions = {
            row.id: (row.kind, row.payment_id)
            for row in session.execute(
                select(CouponRedemption.id, Coupon.kind, CouponRedemption.payment_id)
                .join(Coupon, Coupon.id == CouponRedemption.coupon_id)
                .where(CouponRedemption.account_id == account_id)
            )
        }
        at_processor = set(
            session.scalars(
                select(Refund.payment_id).where(
                    Refund.account_id == account_id,
                    Refund.reason == "processor_refund",
                    Refund.status == "succeeded",
                )
            )
        )
        signed = case(
            (LedgerTransaction.type == "credit", LedgerTransaction.amount_micros),
            else_=-LedgerTransaction.amount_micros,
        )
        outstanding_bonus = {
            str(payment_id): int(total or 0)
            for payment_id, total in session.execute(
                select(LedgerTransaction.payment_id, func.sum(signed))
                .where(
                    LedgerTransaction.account_id == account_id,
                    LedgerTransaction.kind.in_(BONUS_KINDS),
                    LedgerTransaction.status == "succeeded",
                    LedgerTransaction.payment_id.is_not(None),
                )
                .group_by(LedgerTransaction.payment_id)
            )
        }
        held_in_ledger = session.scalar(
            select(func.sum(LedgerPosting.amount_micros)).where(
                LedgerPosting.account_id == account_id,
                LedgerPosting.ledger_account == HOLDS_USAGE,
            )
        )
        usage = _sum(session, account_id, "usage_charge")
        debits = _sum(session, account_id, "adjustment", "debit")
        credits = _sum(session, account_id, "adjustment", "credit")
    by_payment = {p.id: (p.amount_micros, p.refunded_micros) for p in payments}
    coupon_credit = 0
    bonus_granted = 0
    bonus_kept = Fraction(0)
    bonus_by_redemption: dict[str, int] = {}
    credit_by_redemption: dict[str, int] = {}
    for reference, amount in coupon_txns:
        redemption_id = str(reference).removeprefix("coupon:")
        assert redemption_id in redemptions, f"a coupon credit without its redemption: {reference}"
        kind, payment_id = redemptions[redemption_id]
        if kind in PURCHASE_KINDS:
            bonus_granted += amount
            bonus_by_redemption[redemption_id] = amount
            purchase, refunded = by_payment.get(payment_id or "", (1, 1))
            kept = Fraction(amount * (purchase - refunded), purchase)
            if payment_id in at_processor:
                kept = max(kept, Fraction(outstanding_bonus.get(payment_id, 0)))
            bonus_kept += kept
        else:
            coupon_credit += amount
            credit_by_redemption[redemption_id] = amount
    return Books(
        account_id=account_id,
        balance=micros(shown["balance"]),
        withdrawable=micros(shown["withdrawable"]),
        card_paid=sum(p.amount_micros for p in payments),
        returned=int(returned or 0),
        usage=usage,
        debits=debits,
        credits=credits,
        coupon_credit=coupon_credit,
        bonus_granted=bonus_granted,
        bonus_kept=bonus_kept,
        bonus_by_redemption=bonus_by_redemption,
        coupon_credit_by_redemption=credit_by_redemption,
        succeeded_payments=frozenset(by_payment),
        purchased=micros(shown["breakdown"]["purchased"]),
        operator_borne=-int(borne or 0),
        undisputed_left=sum(
            p.amount_micros - p.refunded_micros
            for p in payments
            if p.purpose in REFUNDABLE_PURPOSES and not p.disputed
        ),
        disputed_payments=frozenset(p.id for p in payments if p.disputed),
        held=micros(shown["held"]),
        held_in_ledger=int(held_in_ledger or 0),
    )


def assert_ledger_consistent(api: Api, account_id: str) -> None:
    """Cached balances equal the sums of postings, every transaction balances, and no
    bucket is below zero."""
    check = api.ledger_check(account_id)
    assert check["consistent"] is True, check
    assert all(value >= 0 for value in check["cached"].values()), check


def included_credit(services: Services, agent: Agent) -> tuple[int, int]:
    """The included credit the account still has (its subscription bucket, and what its
    held usage holds keep of it, less what they keep past its grant's expiry), and what
    its unexpired grants granted: the first can never exceed the second, or credit
    outlived its period."""
    with services.database.read() as session:
        bucket = session.scalar(
            select(Wallet.subscription_micros).where(Wallet.account_id == agent.account_id)
        )
        held = session.scalar(
            select(
                func.coalesce(
                    func.sum(UsageHold.subscription_micros - UsageHold.subscription_expired_micros),
                    0,
                )
            ).where(UsageHold.account_id == agent.account_id, UsageHold.status == "held")
        )
        live = session.scalar(
            select(func.coalesce(func.sum(CreditGrant.amount_micros), 0)).where(
                CreditGrant.account_id == agent.account_id, CreditGrant.status == "active"
            )
        )
    return int(bucket or 0) + int(held or 0), int(live or 0)


def assert_conserved(books: Books, *, slack_micros: int = 0) -> None:
    """Received ≤ paid, up to `slack_micros` of rounding to the cent (see the caller)."""
    assert books.received <= books.paid + slack_micros, (
        f"value created from nothing: {books.explain()}"
    )


def state(api: Api, services: Services, agent: Agent) -> tuple[Any, ...]:
    """Everything a refused withdrawal (or a replayed webhook) must leave as it was."""
    with services.database.read() as session:
        refunds = session.scalar(
            select(func.count()).select_from(Refund).where(Refund.account_id == agent.account_id)
        )
        txns = session.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.account_id == agent.account_id)
        )
        refunded = session.scalar(
            select(func.sum(Payment.refunded_micros)).where(Payment.account_id == agent.account_id)
        )
    data = balance_data(agent)
    data.pop("auto_funding", None)
    return (data, api.ledger_check(agent.account_id)["postings"], refunds, txns, refunded)


def assert_withdrawal_refused(api: Api, services: Services, agent: Agent, amount: Decimal) -> None:
    """Withdrawing `amount` is refused (402) and changes nothing."""
    before = state(api, services, agent)
    over = agent.post("/wallet/withdraw", {"amount": str(amount)})
    assert over.status_code < 500, over.text
    assert_error(over, 402, "insufficient_funds")
    assert state(api, services, agent) == before, "a refused withdrawal changed something"


def withdraw_all_withdrawable(api: Api, services: Services, agent: Agent) -> Decimal:
    """Withdrawable is honest: withdrawing a cent more is refused (402) and changes
    nothing; withdrawing exactly the shown amount (if any) succeeds, returns exactly that
    to cards, and leaves nothing withdrawable. The amount withdrawn."""
    shown: Decimal = balance_data(agent)["withdrawable"]
    assert shown >= 0, shown
    assert_withdrawal_refused(api, services, agent, shown + Decimal("0.01"))
    if shown == 0:
        return shown
    done = agent.post("/wallet/withdraw", {"amount": str(shown)})
    assert done.status_code == 200, f"withdraw of the shown withdrawable {shown}: {done.text}"
    refunds = decimal_json(done)["data"]["refunds"]
    assert all(r["status"] == "succeeded" for r in refunds), refunds
    assert sum((r["amount"] for r in refunds), Decimal(0)) == shown, refunds
    left = balance_data(agent)["withdrawable"]
    assert left == 0, f"still withdrawable after withdrawing all of it: {left}"
    return shown
