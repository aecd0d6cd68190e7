"""Demo data for the embedded default: one account with a saved card and some balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import select

from billfold.accounts import service as accounts
from billfold.accounts.models import Account
from billfold.money import to_micros
from billfold.services import Services
from billfold.subscriptions import plans
from billfold.subscriptions.models import Plan
from billfold.subscriptions.states import PlanKind
from billfold.wallet import funding

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a published demo credential, sandbox only
DEMO_FUNDING = Decimal(25)


@dataclass(frozen=True)
class DemoAccess:
    email: str
    password: str
    token: str


@dataclass(frozen=True)
class DemoPlan:
    name: str
    price: Decimal
    period: str
    kind: PlanKind
    included_credits: Decimal
    features: tuple[str, ...]


DEMO_PLANS = (
    DemoPlan(
        "Starter",
        Decimal(9),
        "month",
        PlanKind.NORMAL,
        Decimal(5),
        ("1,000 image generations", "Community support"),
    ),
    DemoPlan(
        "Pro",
        Decimal(29),
        "month",
        PlanKind.NORMAL,
        Decimal(25),
        ("5,000 image generations", "Priority queue", "Email support"),
    ),
    DemoPlan(
        "Pro (yearly)",
        Decimal(290),
        "year",
        PlanKind.NORMAL,
        Decimal(300),
        ("Everything in Pro", "Two months free"),
    ),
    DemoPlan(
        "Extra credits",
        Decimal(10),
        "month",
        PlanKind.ADDON,
        Decimal(12),
        ("$12 of usage credit every month",),
    ),
    DemoPlan(
        "Enterprise",
        Decimal(999),
        "month",
        PlanKind.ENTERPRISE,
        Decimal(1000),
        ("Dedicated capacity", "SLA", "Set up by the operator"),
    ),
)


def seed_plans(services: Services) -> None:
    """The demo plans, once (an operator's own plans are left alone)."""
    with services.database.transaction() as session:
        if session.scalars(select(Plan.id).limit(1)).first() is not None:
            return
        for spec in DEMO_PLANS:
            plans.create_plan(
                session,
                name=spec.name,
                price_micros=to_micros(spec.price),
                currency="USD",
                period=spec.period,
                features=list(spec.features),
                kind=spec.kind,
                included_credits_micros=to_micros(spec.included_credits),
                trial_days=None,
            )


def seed(services: Services) -> DemoAccess:
    """Create the demo plans and account once (funded with $25 by a sandbox test card); mint
    a token."""
    seed_plans(services)
    database = services.database
    with database.transaction() as session:
        account = session.scalars(select(Account).where(Account.email == DEMO_EMAIL)).first()
        created = account is None
        if account is None:
            account = accounts.create_account(session, email=DEMO_EMAIL, password=DEMO_PASSWORD)
        account_id = account.id
    if created:
        card = services.sandbox.tokenize_card(
            number="4242424242424242",
            exp_month="12",
            exp_year=str(date.today().year + 3),
            cvc="123",
        )
        funding.fund_wallet(
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
