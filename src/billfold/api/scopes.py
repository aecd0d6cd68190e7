"""Which scope each operator endpoint needs (an operator key with `admin` may do all).

One table, by method and route template, so a test can check it covers every operator
route. A route missing from it needs `admin`.
"""

from __future__ import annotations

from billfold.operator_keys.service import ADMIN

A = "/api/admin/v1"

USAGE = "usage:write"
ACCOUNTS = "accounts"
PLANS = "plans"
COUPONS = "coupons"
REFUNDS = "refunds"
WEBHOOKS = "webhooks"
TEST_CLOCKS = "test-clocks"

ROUTE_SCOPES: dict[tuple[str, str], str] = {
    # A metering service: usage charges, batches and holds, nothing else.
    ("POST", f"{A}/usage-charges"): USAGE,
    ("POST", f"{A}/usage-charges/batch"): USAGE,
    ("POST", f"{A}/usage-holds"): USAGE,
    ("GET", f"{A}/usage-holds/{{hold_id}}"): USAGE,
    ("POST", f"{A}/usage-holds/{{hold_id}}/capture"): USAGE,
    ("POST", f"{A}/usage-holds/{{hold_id}}/release"): USAGE,
    # Accounts: their life, tokens, books and balance adjustments.
    ("POST", f"{A}/accounts"): ACCOUNTS,
    ("GET", f"{A}/accounts"): ACCOUNTS,
    ("GET", f"{A}/accounts/{{account_id}}"): ACCOUNTS,
    ("POST", f"{A}/accounts/{{account_id}}/suspend"): ACCOUNTS,
    ("POST", f"{A}/accounts/{{account_id}}/reactivate"): ACCOUNTS,
    ("POST", f"{A}/accounts/{{account_id}}/tokens"): ACCOUNTS,
    ("GET", f"{A}/accounts/{{account_id}}/ledger-check"): ACCOUNTS,
    ("POST", f"{A}/adjustments"): ACCOUNTS,
    # Money back to cards, and the payment attempts behind it.
    ("POST", f"{A}/refunds"): REFUNDS,
    ("GET", f"{A}/payment-attempts"): REFUNDS,
    # The catalogue and who is subscribed to it.
    ("GET", f"{A}/plans"): PLANS,
    ("POST", f"{A}/plans"): PLANS,
    ("GET", f"{A}/plans/{{plan_id}}"): PLANS,
    ("PATCH", f"{A}/plans/{{plan_id}}"): PLANS,
    ("POST", f"{A}/plans/{{plan_id}}/archive"): PLANS,
    ("POST", f"{A}/accounts/{{account_id}}/subscriptions"): PLANS,
    ("GET", f"{A}/accounts/{{account_id}}/subscriptions"): PLANS,
    ("POST", f"{A}/coupons"): COUPONS,
    ("GET", f"{A}/coupons"): COUPONS,
    ("POST", f"{A}/coupons/{{code}}/archive"): COUPONS,
    ("GET", f"{A}/webhook-endpoints"): WEBHOOKS,
    ("POST", f"{A}/webhook-endpoints"): WEBHOOKS,
    ("PUT", f"{A}/webhook-endpoints/{{endpoint_id}}"): WEBHOOKS,
    ("DELETE", f"{A}/webhook-endpoints/{{endpoint_id}}"): WEBHOOKS,
    ("POST", f"{A}/webhook-endpoints/{{endpoint_id}}/rotate-secret"): WEBHOOKS,
    ("GET", f"{A}/webhook-endpoints/{{endpoint_id}}/deliveries"): WEBHOOKS,
    ("POST", f"{A}/webhook-deliveries/{{delivery_id}}/redeliver"): WEBHOOKS,
    ("POST", f"{A}/test-clocks"): TEST_CLOCKS,
    ("GET", f"{A}/test-clocks/{{test_clock_id}}"): TEST_CLOCKS,
    ("POST", f"{A}/test-clocks/{{test_clock_id}}/advance"): TEST_CLOCKS,
    # The seller's invoice settings and the operator keys themselves: admin only.
    ("GET", f"{A}/invoice-settings"): ADMIN,
    ("PUT", f"{A}/invoice-settings"): ADMIN,
    ("GET", f"{A}/operator-keys"): ADMIN,
    ("POST", f"{A}/operator-keys"): ADMIN,
    ("POST", f"{A}/operator-keys/{{key_id}}/revoke"): ADMIN,
}


def scope_of(method: str, route: str) -> str:
    """The scope a request to `route` (its template) with `method` needs."""
    return ROUTE_SCOPES.get((method, route), ADMIN)
