"""The operator API (`/api/admin/v1`): `BillfoldAdmin` (and `AsyncBillfoldAdmin`).

The same machinery as the agent clients: typed results and errors, an Idempotency-Key on
every write kept across retries (pass `idempotency_key=` to make a retry of your own, e.g.
a usage charge per job, charge once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import TypeAdapter

from billfold.accounts.schemas import AccountOut, AccountPage, TokenOut
from billfold.client.agent import Amount
from billfold.client.core import AsyncCore, Call, ClientBase, SyncCore, body, route, routes_of
from billfold.coupons.schemas import CouponOut
from billfold.invoices.schemas import InvoiceSettingsOut
from billfold.operator_keys.schemas import (
    OperatorKeyCreatedOut,
    OperatorKeyListOut,
    OperatorKeyOut,
)
from billfold.payments.schemas import PaymentAttemptList
from billfold.subscriptions.schemas import AccountSubscriptionsOut, PlanOut, SubscriptionOut
from billfold.testclock.schemas import AdvancedTestClockOut, TestClockOut
from billfold.wallet.batch_schemas import UsageBatchOut
from billfold.wallet.schemas import (
    LedgerCheckOut,
    OperatorRefundOut,
    TransactionOut,
    UsageChargeOut,
    UsageHoldOut,
)
from billfold.webhooks.schemas import (
    DeletedEndpointOut,
    DeliveryOut,
    EndpointOut,
    EndpointWithSecretOut,
)

_PLANS = TypeAdapter(list[PlanOut])
_COUPONS = TypeAdapter(list[CouponOut])
_ENDPOINTS = TypeAdapter(list[EndpointOut])
_DELIVERIES = TypeAdapter(list[DeliveryOut])


class AdminAPI(ClientBase):
    """Every operator endpoint (shared by the sync and async admin clients)."""

    _prefix = "/api/admin/v1"

    # --- accounts and tokens ----------------------------------------------------------

    @route("POST", "/accounts")
    def create_account(
        self,
        email: str,
        password: str,
        *,
        currency: Literal["USD", "EUR", "GBP"] = "USD",
        test_clock_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Call[AccountOut]:
        return Call(
            AccountOut.model_validate,
            json=body(
                email=email, password=password, currency=currency, test_clock_id=test_clock_id
            ),
            idempotency_key=idempotency_key,
        )

    @route("GET", "/accounts")
    def list_accounts(
        self,
        *,
        email: str | None = None,
        status: Literal["active", "suspended"] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Call[AccountPage]:
        """Accounts, newest first; `email` matches a part of the address."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if email:
            params["email"] = email
        if status:
            params["status"] = status
        return Call(AccountPage.model_validate, params=params)

    @route("GET", "/accounts/{account_id}")
    def get_account(self, account_id: str) -> Call[AccountOut]:
        return Call(AccountOut.model_validate, path_params={"account_id": account_id})

    @route("POST", "/accounts/{account_id}/suspend")
    def suspend_account(self, account_id: str) -> Call[AccountOut]:
        return Call(AccountOut.model_validate, path_params={"account_id": account_id})

    @route("POST", "/accounts/{account_id}/reactivate")
    def reactivate_account(self, account_id: str) -> Call[AccountOut]:
        return Call(AccountOut.model_validate, path_params={"account_id": account_id})

    @route("POST", "/accounts/{account_id}/tokens")
    def issue_token(
        self,
        account_id: str,
        expires_in: Literal["1_week", "1_month", "3_months", "never"] = "1_month",
    ) -> Call[TokenOut]:
        """Mint an agent token for the account (shown once)."""
        return Call(
            TokenOut.model_validate,
            path_params={"account_id": account_id},
            json={"expires_in": expires_in},
        )

    # --- money ------------------------------------------------------------------------

    @route("POST", "/usage-charges")
    def create_usage_charge(
        self,
        account_id: str,
        amount: Amount,
        usecase: str,
        description: str | None = None,
        idempotency_key: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call[UsageChargeOut]:
        """Debit the wallet for usage; InsufficientFunds if it cannot cover it."""
        return Call(
            UsageChargeOut.model_validate,
            json=body(
                account_id=account_id,
                amount=amount,
                usecase=usecase,
                description=description,
                metadata=dict(metadata) if metadata is not None else None,
            ),
            idempotency_key=idempotency_key,
        )

    @route("POST", "/usage-charges/batch")
    def create_usage_charges_batch(
        self, charges: Sequence[Mapping[str, Any]]
    ) -> Call[UsageBatchOut]:
        """Up to 1,000 usage charges in one request, each a mapping of a usage charge's
        fields (account_id, amount, usecase, description?, metadata?) and its own
        `idempotency_key`. Each item has its own outcome (charged, replayed,
        insufficient_funds, invalid, refused): a refusal is an item's status, not an
        exception. Sending the same batch again charges nothing twice."""
        return Call(UsageBatchOut.model_validate, json={"charges": [dict(c) for c in charges]})

    @route("POST", "/usage-holds")
    def create_usage_hold(
        self,
        account_id: str,
        amount: Amount,
        usecase: str,
        description: str | None = None,
        idempotency_key: str | None = None,
        *,
        ttl_seconds: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call[UsageHoldOut]:
        """Reserve funds for usage to capture later (expires after ttl_seconds, default an
        hour); InsufficientFunds if the balance cannot cover it."""
        return Call(
            UsageHoldOut.model_validate,
            json=body(
                account_id=account_id,
                amount=amount,
                usecase=usecase,
                description=description,
                metadata=dict(metadata) if metadata is not None else None,
                ttl_seconds=ttl_seconds,
            ),
            idempotency_key=idempotency_key,
        )

    @route("GET", "/usage-holds/{hold_id}")
    def get_usage_hold(self, hold_id: str, account_id: str | None = None) -> Call[UsageHoldOut]:
        return Call(
            UsageHoldOut.model_validate,
            path_params={"hold_id": hold_id},
            params={"account_id": account_id},
        )

    @route("POST", "/usage-holds/{hold_id}/capture")
    def capture_usage_hold(
        self,
        hold_id: str,
        amount: Amount | None = None,
        *,
        account_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Call[UsageHoldOut]:
        """Charge all (no amount) or part of a hold as usage; the rest goes back."""
        return Call(
            UsageHoldOut.model_validate,
            path_params={"hold_id": hold_id},
            json=body(amount=amount, account_id=account_id),
            idempotency_key=idempotency_key,
        )

    @route("POST", "/usage-holds/{hold_id}/release")
    def release_usage_hold(
        self,
        hold_id: str,
        *,
        account_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Call[UsageHoldOut]:
        """Give a whole hold back to the wallet."""
        return Call(
            UsageHoldOut.model_validate,
            path_params={"hold_id": hold_id},
            json=body(account_id=account_id),
            idempotency_key=idempotency_key,
        )

    @route("POST", "/adjustments")
    def create_adjustment(
        self, account_id: str, amount: Amount, reason: str, *, idempotency_key: str | None = None
    ) -> Call[TransactionOut]:
        """Credit (promotional credit, amount > 0) or debit (amount < 0) a wallet by hand."""
        return Call(
            TransactionOut.model_validate,
            json={"account_id": account_id, "amount": amount, "reason": reason},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/refunds")
    def refund_payment(
        self,
        payment_intent_id: str,
        reason: str,
        amount: Amount | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Call[OperatorRefundOut]:
        """Refund a card payment, whole (no amount) or in part."""
        return Call(
            OperatorRefundOut.model_validate,
            json=body(payment_intent_id=payment_intent_id, amount=amount, reason=reason),
            idempotency_key=idempotency_key,
        )

    @route("GET", "/accounts/{account_id}/ledger-check")
    def ledger_check(self, account_id: str) -> Call[LedgerCheckOut]:
        return Call(LedgerCheckOut.model_validate, path_params={"account_id": account_id})

    @route("GET", "/payment-attempts")
    def list_payment_attempts(
        self,
        state: Literal["pending", "unknown", "succeeded", "failed"] | None = None,
        account_id: str | None = None,
        limit: int = 50,
    ) -> Call[PaymentAttemptList]:
        return Call(
            PaymentAttemptList.model_validate,
            params={"state": state, "account_id": account_id, "limit": limit},
        )

    # --- plans and subscriptions ------------------------------------------------------

    @route("POST", "/plans")
    def create_plan(
        self,
        name: str,
        price: Amount,
        period: Literal["month", "year"],
        features: Sequence[str] = (),
        *,
        kind: Literal["normal", "addon", "enterprise"] = "normal",
        currency: str = "USD",
        included_credits: Amount | None = None,
        trial_days: int | None = None,
        idempotency_key: str | None = None,
    ) -> Call[PlanOut]:
        return Call(
            PlanOut.model_validate,
            json=body(
                name=name,
                price=price,
                period=period,
                features=list(features),
                kind=kind,
                currency=currency,
                included_credits=included_credits,
                trial_days=trial_days,
            ),
            idempotency_key=idempotency_key,
        )

    @route("GET", "/plans")
    def list_plans(self) -> Call[list[PlanOut]]:
        return Call(_PLANS.validate_python)

    @route("GET", "/plans/{plan_id}")
    def get_plan(self, plan_id: int) -> Call[PlanOut]:
        return Call(PlanOut.model_validate, path_params={"plan_id": plan_id})

    @route("PATCH", "/plans/{plan_id}")
    def update_plan(
        self,
        plan_id: int,
        *,
        name: str | None = None,
        features: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Call[PlanOut]:
        return Call(
            PlanOut.model_validate,
            path_params={"plan_id": plan_id},
            json=body(name=name, features=list(features) if features is not None else None),
            idempotency_key=idempotency_key,
        )

    @route("POST", "/plans/{plan_id}/archive")
    def archive_plan(self, plan_id: int, *, idempotency_key: str | None = None) -> Call[PlanOut]:
        return Call(
            PlanOut.model_validate,
            path_params={"plan_id": plan_id},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/accounts/{account_id}/subscriptions")
    def create_subscription(
        self,
        account_id: str,
        plan_id: int,
        payment_method_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Call[SubscriptionOut]:
        """Subscribe an account to any plan (enterprise too), charged to its default card."""
        return Call(
            SubscriptionOut.model_validate,
            path_params={"account_id": account_id},
            json=body(plan_id=plan_id, payment_method_id=payment_method_id),
            idempotency_key=idempotency_key,
        )

    @route("GET", "/accounts/{account_id}/subscriptions")
    def list_subscriptions(self, account_id: str) -> Call[AccountSubscriptionsOut]:
        return Call(AccountSubscriptionsOut.model_validate, path_params={"account_id": account_id})

    # --- coupons ----------------------------------------------------------------------

    @route("POST", "/coupons")
    def create_coupon(
        self,
        code: str,
        kind: Literal["credit", "bonus_percent", "bonus_fixed"],
        *,
        amount: Amount | None = None,
        percent: Amount | None = None,
        min_purchase: Amount | None = None,
        currency: Literal["USD", "EUR", "GBP"] = "USD",
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        max_redemptions: int | None = None,
        idempotency_key: str | None = None,
    ) -> Call[CouponOut]:
        return Call(
            CouponOut.model_validate,
            json=body(
                code=code,
                kind=kind,
                amount=amount,
                percent=percent,
                min_purchase=min_purchase,
                currency=currency,
                valid_from=valid_from,
                valid_until=valid_until,
                max_redemptions=max_redemptions,
            ),
            idempotency_key=idempotency_key,
        )

    @route("GET", "/coupons")
    def list_coupons(self) -> Call[list[CouponOut]]:
        return Call(_COUPONS.validate_python)

    @route("POST", "/coupons/{code}/archive")
    def archive_coupon(self, code: str) -> Call[CouponOut]:
        return Call(CouponOut.model_validate, path_params={"code": code})

    # --- test clocks ------------------------------------------------------------------

    @route("POST", "/test-clocks")
    def create_test_clock(
        self,
        name: str | None = None,
        frozen_time: datetime | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Call[TestClockOut]:
        return Call(
            TestClockOut.model_validate,
            json=body(name=name, frozen_time=frozen_time),
            idempotency_key=idempotency_key,
        )

    @route("GET", "/test-clocks/{test_clock_id}")
    def get_test_clock(self, test_clock_id: str) -> Call[TestClockOut]:
        return Call(TestClockOut.model_validate, path_params={"test_clock_id": test_clock_id})

    @route("POST", "/test-clocks/{test_clock_id}/advance")
    def advance_test_clock(
        self,
        test_clock_id: str,
        *,
        days: int | None = None,
        hours: int | None = None,
        seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Call[AdvancedTestClockOut]:
        """Move the clock forward, running its accounts' due jobs on the way."""
        return Call(
            AdvancedTestClockOut.model_validate,
            path_params={"test_clock_id": test_clock_id},
            json=body(days=days, hours=hours, seconds=seconds),
            idempotency_key=idempotency_key,
        )

    # --- invoice settings and webhooks ------------------------------------------------

    @route("GET", "/invoice-settings")
    def get_invoice_settings(self) -> Call[InvoiceSettingsOut]:
        return Call(InvoiceSettingsOut.model_validate)

    @route("PUT", "/invoice-settings")
    def update_invoice_settings(
        self,
        *,
        seller: Mapping[str, Any] | None = None,
        invoice_prefix: str | None = None,
        credit_note_prefix: str | None = None,
        tax_rates: Mapping[str, Amount] | None = None,
    ) -> Call[InvoiceSettingsOut]:
        return Call(
            InvoiceSettingsOut.model_validate,
            json=body(
                seller=dict(seller) if seller is not None else None,
                invoice_prefix=invoice_prefix,
                credit_note_prefix=credit_note_prefix,
                tax_rates=dict(tax_rates) if tax_rates is not None else None,
            ),
        )

    @route("POST", "/webhook-endpoints")
    def create_webhook_endpoint(
        self, url: str, event_types: Sequence[str] = ("*",), enabled: bool = True
    ) -> Call[EndpointWithSecretOut]:
        """Register an endpoint; the answer carries its signing secret (shown once)."""
        return Call(
            EndpointWithSecretOut.model_validate,
            json={"url": url, "event_types": list(event_types), "enabled": enabled},
        )

    @route("GET", "/webhook-endpoints")
    def list_webhook_endpoints(self) -> Call[list[EndpointOut]]:
        return Call(_ENDPOINTS.validate_python)

    @route("PUT", "/webhook-endpoints/{endpoint_id}")
    def update_webhook_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        enabled: bool | None = None,
    ) -> Call[EndpointOut]:
        return Call(
            EndpointOut.model_validate,
            path_params={"endpoint_id": endpoint_id},
            json=body(
                url=url,
                event_types=list(event_types) if event_types is not None else None,
                enabled=enabled,
            ),
        )

    @route("POST", "/webhook-endpoints/{endpoint_id}/rotate-secret")
    def rotate_webhook_secret(self, endpoint_id: str) -> Call[EndpointWithSecretOut]:
        return Call(EndpointWithSecretOut.model_validate, path_params={"endpoint_id": endpoint_id})

    @route("DELETE", "/webhook-endpoints/{endpoint_id}")
    def delete_webhook_endpoint(self, endpoint_id: str) -> Call[DeletedEndpointOut]:
        return Call(DeletedEndpointOut.model_validate, path_params={"endpoint_id": endpoint_id})

    @route("GET", "/webhook-endpoints/{endpoint_id}/deliveries")
    def list_webhook_deliveries(self, endpoint_id: str, limit: int = 50) -> Call[list[DeliveryOut]]:
        return Call(
            _DELIVERIES.validate_python,
            path_params={"endpoint_id": endpoint_id},
            params={"limit": limit},
        )

    @route("POST", "/webhook-deliveries/{delivery_id}/redeliver")
    def redeliver_webhook(self, delivery_id: str) -> Call[DeliveryOut]:
        return Call(DeliveryOut.model_validate, path_params={"delivery_id": delivery_id})

    @route("POST", "/operator-keys")
    def create_operator_key(self, name: str, scopes: Sequence[str]) -> Call[OperatorKeyCreatedOut]:
        """A new operator key with `scopes`; the answer's `key` is shown once."""
        return Call(
            OperatorKeyCreatedOut.model_validate, json={"name": name, "scopes": list(scopes)}
        )

    @route("GET", "/operator-keys")
    def list_operator_keys(self, include_revoked: bool = False) -> Call[OperatorKeyListOut]:
        return Call(OperatorKeyListOut.model_validate, params={"include_revoked": include_revoked})

    @route("POST", "/operator-keys/{key_id}/revoke")
    def revoke_operator_key(self, key_id: str) -> Call[OperatorKeyOut]:
        return Call(OperatorKeyOut.model_validate, path_params={"key_id": key_id})


ADMIN_ROUTES: dict[tuple[str, str], tuple[str, ...]] = routes_of(AdminAPI)
"""Every operator route (METHOD, /api/admin/v1/…) → the SDK method that calls it."""


class BillfoldAdmin(SyncCore, AdminAPI):
    """The operator API: `BillfoldAdmin("http://127.0.0.1:8000", admin_key)`."""

    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        timeout: float = 30,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_retry_wait: float = 60.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url,
            admin_key,
            timeout=timeout,
            max_retries=max_retries,
            transport=transport,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_retry_wait=max_retry_wait,
            http_client=http_client,
        )


class AsyncBillfoldAdmin(AsyncCore, AdminAPI):
    """The operator API, awaited."""

    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        timeout: float = 30,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_retry_wait: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url,
            admin_key,
            timeout=timeout,
            max_retries=max_retries,
            transport=transport,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_retry_wait=max_retry_wait,
            http_client=http_client,
        )
