"""Property test: random sequences of money operations keep the ledger's invariants.

The operations run through the service layer (the same functions the routers call)
against both databases; a small model of the three credit buckets predicts every
balance, and after each step the cached balances must equal the sums of the postings.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billfold.accounts import service as accounts
from billfold.errors import BillfoldError, InsufficientFunds, PaymentFailed
from billfold.ledger.models import BUCKETS
from billfold.ledger.service import ledger_balances
from billfold.services import Services
from billfold.wallet import funding as wallet_funding
from billfold.wallet import refunds as wallet_refunds
from billfold.wallet import service as wallet
from tests.conftest import LiveServer

cents = st.integers(min_value=1, max_value=50_000).map(lambda c: c * 10_000)
micros = st.integers(min_value=1, max_value=30_000_000)

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("fund"),
            st.integers(min_value=1_000, max_value=20_000).map(lambda c: c * 10_000),
        ),
        st.tuples(st.just("fund_declined"), st.just(10_000_000)),
        st.tuples(st.just("charge"), micros),
        st.tuples(st.just("withdraw"), cents),
        st.tuples(st.just("refund"), cents),
        st.tuples(st.just("credit"), micros),
        st.tuples(st.just("debit"), micros),
    ),
    min_size=1,
    max_size=12,
)


@dataclass
class Model:
    buckets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0))
    refundable: list[tuple[str, int]] = field(default_factory=list)  # (payment id, left)

    def spend(self, amount: int) -> bool:
        if sum(self.buckets.values()) < amount:
            return False
        for bucket in BUCKETS:
            take = min(self.buckets[bucket], amount)
            self.buckets[bucket] -= take
            amount -= take
        return True


def _check(services: Services, account_id: str, model: Model) -> None:
    with services.database.read() as session:
        row = wallet.get_wallet(session, account_id)
        sums = ledger_balances(session, account_id)
    cached = {b: getattr(row, f"{b}_micros") for b in BUCKETS}
    assert cached == model.buckets
    assert row.balance_micros == sum(cached.values())
    assert all(value >= 0 for value in cached.values())
    assert {b: sums.get(f"wallet:{b}", 0) for b in BUCKETS} == cached
    assert sum(sums.values()) == 0  # every transaction balanced


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_random_operations_keep_invariants(
    live_server: LiveServer, ops: list[tuple[str, int]]
) -> None:
    services = live_server.services
    database, processor = services.database, services.processor
    with database.transaction() as session:
        account_id = accounts.create_account(
            session, email=f"prop-{uuid.uuid4().hex}@example.com", password="property-test"
        ).id
    ok_card = processor.tokenize_card(
        number="4242424242424242", exp_month="12", exp_year="2035", cvc="123"
    )["id"]
    bad_card = processor.tokenize_card(
        number="4000000000000002", exp_month="12", exp_year="2035", cvc="123"
    )["id"]
    model = Model()

    for op, amount in ops:
        if op == "fund":
            funded = wallet_funding.fund_wallet(
                database,
                processor,
                account_id=account_id,
                amount_micros=amount,
                payment_method_id=ok_card,
                idempotency_key=None,
            )
            model.buckets["purchased"] += amount
            model.refundable.insert(0, (funded.payment.id, amount))
        elif op == "fund_declined":
            try:
                wallet_funding.fund_wallet(
                    database,
                    processor,
                    account_id=account_id,
                    amount_micros=amount,
                    payment_method_id=bad_card,
                    idempotency_key=None,
                )
                raise AssertionError("a declining card funded the wallet")
            except PaymentFailed:
                pass
        elif op == "charge" or op == "debit":
            expected = model.spend(amount)
            try:
                with database.transaction() as session:
                    if op == "charge":
                        wallet.charge_usage(
                            session,
                            account_id=account_id,
                            amount_micros=amount,
                            usecase="prop",
                            description=None,
                            metadata=None,
                        )
                    else:
                        wallet.adjust(
                            session, account_id=account_id, amount_micros=-amount, reason="p"
                        )
                assert expected
            except InsufficientFunds:
                assert not expected
        elif op == "credit":
            with database.transaction() as session:
                wallet.adjust(session, account_id=account_id, amount_micros=amount, reason="p")
            model.buckets["promotional"] += amount
        elif op == "withdraw":
            expected = model.buckets["purchased"] >= amount
            try:
                wallet_refunds.withdraw(
                    database, processor, account_id=account_id, amount_micros=amount
                )
                assert expected
                model.buckets["purchased"] -= amount
                left = amount
                for index, (payment_id, available) in enumerate(model.refundable):
                    take = min(available, left)
                    model.refundable[index] = (payment_id, available - take)
                    left -= take
            except InsufficientFunds:
                assert not expected
        elif op == "refund" and model.refundable:
            payment_id, available = model.refundable[0]
            expected = 0 < amount <= available and model.buckets["purchased"] >= amount
            try:
                wallet_refunds.refund_payment(
                    database,
                    processor,
                    payment_intent_id=payment_id,
                    amount_micros=amount,
                    reason="operator_refund",
                )
                assert expected
                model.buckets["purchased"] -= amount
                model.refundable[0] = (payment_id, available - amount)
            except BillfoldError:
                assert not expected
        _check(services, account_id, model)
