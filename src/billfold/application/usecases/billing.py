"""Billing use cases: the billing overview, and the account's billing info."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field
from sqlalchemy.orm import Session

from billfold.application import overview as overview_read
from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account
from billfold.billing import service
from billfold.billing.schemas import BillingInfoOut, BillingInfoUpdate
from billfold.money import MoneyOut
from billfold.payments.schemas import PaymentMethodOut
from billfold.schemas import ResponseModel
from billfold.services import Services
from billfold.subscriptions.schemas import SubscriptionOut
from billfold.wallet.schemas import AutoFundingOut, Breakdown, TransactionOut


class PaymentSummaryOut(ResponseModel):
    payment_intent_id: str
    status: str
    purpose: str
    amount: MoneyOut
    currency: str
    created_at: datetime
    decline_code: str | None


class BillingOverviewOut(ResponseModel):
    wallet_balance: MoneyOut
    currency: str
    balance_breakdown: Breakdown
    auto_funding: AutoFundingOut
    default_payment_method: PaymentMethodOut | None
    active_subscriptions: list[SubscriptionOut] = Field(
        description="Each as GET /subscriptions/{id} answers it"
    )
    recent_charges: list[PaymentSummaryOut]
    recent_transactions: list[TransactionOut]


def overview(app: Services, *, account_id: str) -> BillingOverviewOut:
    """Wallet balance, auto-funding, default card, subscriptions and recent charges."""
    with app.database.read() as session:
        return BillingOverviewOut.model_validate(overview_read.overview(session, account_id))


def info(app: Services, *, account_id: str) -> BillingInfoOut:
    with app.database.read() as session:
        return BillingInfoOut.model_validate(
            service.info_view(service.get_info(session, account_id))
        )


def update_info(app: Services, *, call: Call, account_id: str, body: BillingInfoUpdate) -> Reply:
    """Update the fields given; the others keep their values (null clears a field)."""
    changes = body.model_dump(include=body.model_fields_set)

    def handler(session: Session) -> Outcome:
        updated = service.update_info(session, account_id=account_id, changes=changes)
        return 200, BillingInfoOut.model_validate(service.info_view(updated))

    return for_account(app, call, account_id).atomic(handler)
