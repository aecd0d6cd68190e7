"""Demo data for the embedded default: one account with a saved card and some balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import select

from billfold.accounts import service as accounts
from billfold.accounts.models import Account
from billfold.api.deps import Services
from billfold.money import to_micros
from billfold.wallet import service as wallet

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a published demo credential, sandbox only
DEMO_FUNDING = Decimal(25)


@dataclass(frozen=True)
class DemoAccess:
    email: str
    password: str
    token: str


def seed(services: Services) -> DemoAccess:
    """Create the demo account once (funded with $25 by a sandbox test card); mint a token."""
    database = services.database
    with database.transaction() as session:
        account = session.scalars(select(Account).where(Account.email == DEMO_EMAIL)).first()
        created = account is None
        if account is None:
            account = accounts.create_account(session, email=DEMO_EMAIL, password=DEMO_PASSWORD)
        account_id = account.id
    if created:
        card = services.processor.tokenize_card(
            number="4242424242424242",
            exp_month="12",
            exp_year=str(date.today().year + 3),
            cvc="123",
        )
        wallet.fund_wallet(
            database,
            services.processor,
            account_id=account_id,
            amount_micros=to_micros(DEMO_FUNDING),
            payment_method_id=card["id"],
            idempotency_key="demo-seed",
        )
    with database.transaction() as session:
        issued = accounts.issue_token(session, account_id=account_id, expires_in="1_week")
    return DemoAccess(email=DEMO_EMAIL, password=DEMO_PASSWORD, token=issued.token)
