"""Billfold's typed Python SDK.

    from billfold.client import Billfold, PaymentDeclined

    with Billfold("http://127.0.0.1:8000", token) as bf:
        pm = bf.create_payment_method("4242424242424242", 12, 2030, "123")
        try:
            funding = bf.fund_wallet(50, pm)          # an Idempotency-Key is added for you
        except PaymentDeclined as exc:
            print(exc.decline_code)

`AsyncBillfold` has the same methods, awaited; `BillfoldAdmin` is the operator API.
"""

from billfold.client.admin import ADMIN_ROUTES, AsyncBillfoldAdmin, BillfoldAdmin
from billfold.client.agent import (
    AGENT_ROUTES,
    UNSET,
    AsyncBillfold,
    Billfold,
    FundingCheck,
    ProcessorPaymentMethod,
    ProcessorSetupIntent,
)
from billfold.client.core import new_idempotency_key
from billfold.client.errors import (
    ERROR_CLASSES,
    APIConnectionError,
    AuthenticationRequired,
    BillfoldError,
    CardDeclined,
    CheckoutExpired,
    CheckoutNotCompleted,
    Conflict,
    Gone,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
    PaymentDeclined,
    PermissionDenied,
    RateLimited,
    ServerError,
    Unauthenticated,
    error_class,
)

__all__ = [
    "ADMIN_ROUTES",
    "AGENT_ROUTES",
    "ERROR_CLASSES",
    "UNSET",
    "APIConnectionError",
    "AsyncBillfold",
    "AsyncBillfoldAdmin",
    "AuthenticationRequired",
    "Billfold",
    "BillfoldAdmin",
    "BillfoldError",
    "CardDeclined",
    "CheckoutExpired",
    "CheckoutNotCompleted",
    "Conflict",
    "FundingCheck",
    "Gone",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidRequest",
    "NotFound",
    "PaymentDeclined",
    "PermissionDenied",
    "ProcessorPaymentMethod",
    "ProcessorSetupIntent",
    "RateLimited",
    "ServerError",
    "Unauthenticated",
    "error_class",
    "new_idempotency_key",
]
