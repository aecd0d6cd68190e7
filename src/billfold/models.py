"""Every table, imported in one place so Alembic and tests see the whole schema."""

from billfold.accounts.models import Account, AgentToken
from billfold.billing.models import BillingInfo
from billfold.checkout.models import CheckoutSession
from billfold.coupons.models import Coupon, CouponRedemption
from billfold.db import Base
from billfold.idempotency.models import IdempotencyKey
from billfold.invoices.models import Invoice, InvoiceLine, NumberSeries, OperatorSettings
from billfold.jobs.models import Job
from billfold.ledger.models import LedgerPosting, LedgerTransaction, Wallet
from billfold.operator_keys.models import OperatorKey
from billfold.payments.models import (
    Dispute,
    Payment,
    PaymentAttempt,
    PaymentMethod,
    ProcessorEvent,
    Refund,
)
from billfold.processors.sandbox import SandboxObject
from billfold.ratelimit import RateLimitCounter
from billfold.subscriptions.models import CreditGrant, Plan, Subscription
from billfold.testclock.models import TestClock
from billfold.wallet.models import UsageHold
from billfold.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "Account",
    "AgentToken",
    "Base",
    "BillingInfo",
    "CheckoutSession",
    "Coupon",
    "CouponRedemption",
    "CreditGrant",
    "Dispute",
    "IdempotencyKey",
    "Invoice",
    "InvoiceLine",
    "Job",
    "LedgerPosting",
    "LedgerTransaction",
    "NumberSeries",
    "OperatorKey",
    "OperatorSettings",
    "Payment",
    "PaymentAttempt",
    "PaymentMethod",
    "Plan",
    "ProcessorEvent",
    "RateLimitCounter",
    "Refund",
    "SandboxObject",
    "Subscription",
    "TestClock",
    "UsageHold",
    "Wallet",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
