"""The agent API (`/api/agents/v1`): `Billfold` (sync) and `AsyncBillfold` (async).

Each method is declared once in `AgentAPI`, named as the reference billing skill's helper
functions, and answers the API's own response model (money as Decimal). Writes carry an
Idempotency-Key (yours with `idempotency_key=`, else a new uuid4 one) that stays the same
across the SDK's retries, so a funding whose answer was lost is retried and charges once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter

from billfold.accounts.schemas import RevokedTokenOut, TokenOut
from billfold.application.usecases.billing import BillingOverviewOut
from billfold.billing.schemas import BillingInfoOut
from billfold.checkout.schemas import ConfirmedCheckoutOut, PaymentLinkOut
from billfold.client.core import (
    AsyncCore,
    Call,
    ClientBase,
    Notify,
    Planner,
    Program,
    Sleep,
    SyncCore,
    body,
    new_idempotency_key,
    perform,
    program,
    program_for,
    route,
    routes_of,
)
from billfold.client.errors import CheckoutExpired, CheckoutNotCompleted
from billfold.coupons.schemas import (
    CouponValidationOut,
    InvalidCouponOut,
    RedemptionOut,
    ValidBonusCouponOut,
    ValidCouponOut,
)
from billfold.errors import ErrorCode
from billfold.invoices.schemas import InvoiceOut, InvoicePage, InvoicePdfLinkOut
from billfold.payments.schemas import (
    PaymentMethodList,
    PaymentMethodOut,
    PaymentOut,
    RemovedPaymentMethodOut,
    SetupIntentOut,
    StripeConfigOut,
)
from billfold.subscriptions.schemas import (
    ChargeAmountOut,
    ConfirmedSubscriptionOut,
    PlansOut,
    SubscribeLinkOut,
    SubscriptionListOut,
    SubscriptionOut,
)
from billfold.wallet.schemas import (
    AutoFundingOut,
    BalanceOut,
    FundOut,
    TransactionPage,
    WithdrawOut,
)

Amount = Decimal | int | str
"""An amount of currency units: a Decimal, an int or a decimal string (never a float)."""

CouponValidation = InvalidCouponOut | ValidBonusCouponOut | ValidCouponOut


class _Unset(Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET
"""A billing-info field left out of an update (None clears the field)."""


class ProcessorPaymentMethod(BaseModel):
    """The card processor's PaymentMethod (the sandbox's or Stripe's), as tokenized."""

    model_config = ConfigDict(extra="allow")
    id: str


class ProcessorSetupIntent(BaseModel):
    """A SetupIntent confirmed at the processor: `payment_method` is the saved card."""

    model_config = ConfigDict(extra="allow")
    status: str
    payment_method: str | None = None


@dataclass(frozen=True)
class FundingCheck:
    """What `ensure_account_funded` found and did."""

    funded: bool
    balance: Decimal  # after the top-up, if one was made
    previous_balance: Decimal
    funding: FundOut | None = None
    idempotency_key: str | None = None


def _card_form(number: str, exp_month: int, exp_year: int, cvc: str, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}[number]": number,
        f"{prefix}[exp_month]": exp_month,
        f"{prefix}[exp_year]": exp_year,
        f"{prefix}[cvc]": cvc,
    }


def _subscription_result(data: Any) -> SubscriptionOut:
    return SubscriptionOut.model_validate(data)


_COUPON_VALIDATION = TypeAdapter(CouponValidationOut)


def _coupon_validation(data: Any) -> CouponValidation:
    return _COUPON_VALIDATION.validate_python(data).root


class AgentAPI(ClientBase):
    """Every agent endpoint and the helpers composed of them (shared by both clients)."""

    _prefix = "/api/agents/v1"
    _stripe_config: StripeConfigOut | None = None

    @property
    def _plan(self) -> _AgentPlanner:
        return _AgentPlanner(self)

    # --- auth -----------------------------------------------------------------------

    @program_for("POST", "/auth/login")
    def login(
        self,
        email: str,
        password: str,
        expires_in: Literal["1_week", "1_month", "3_months", "never"] = "1_month",
    ) -> Program[TokenOut]:
        """Exchange email and password for an agent token; the client then uses it."""
        call = Call(
            TokenOut.model_validate,
            json={"email": email, "password": password, "expires_in": expires_in},
            anonymous=True,
        )
        token = yield from perform(self, "POST", "/auth/login", call)
        self.credential = token.access_token
        return token

    @route("DELETE", "/auth/tokens/current")
    def logout(self) -> Call[RevokedTokenOut]:
        """Revoke the token this client uses."""
        return Call(RevokedTokenOut.model_validate)

    # --- billing ----------------------------------------------------------------------

    @route("GET", "/billing/overview")
    def get_billing_overview(self) -> Call[BillingOverviewOut]:
        """Wallet balance, auto-funding, default card, subscriptions and recent charges."""
        return Call(BillingOverviewOut.model_validate)

    @route("GET", "/billing/stripe-config")
    def get_stripe_config(self) -> Call[StripeConfigOut]:
        """The publishable key and the API base to tokenize cards at."""
        return Call(StripeConfigOut.model_validate)

    @route("GET", "/billing/info")
    def get_billing_info(self) -> Call[BillingInfoOut]:
        return Call(BillingInfoOut.model_validate)

    @route("PUT", "/billing/info")
    def update_billing_info(
        self,
        *,
        name: str | _Unset | None = UNSET,
        email: str | _Unset | None = UNSET,
        tax_id: str | _Unset | None = UNSET,
        tax_id_type: str | _Unset | None = UNSET,
        address_line1: str | _Unset | None = UNSET,
        address_line2: str | _Unset | None = UNSET,
        address_city: str | _Unset | None = UNSET,
        address_state: str | _Unset | None = UNSET,
        address_postal_code: str | _Unset | None = UNSET,
        address_country: str | _Unset | None = UNSET,
        idempotency_key: str | None = None,
    ) -> Call[BillingInfoOut]:
        """Update the fields given; the others keep their values (None clears a field)."""
        given = {
            "name": name,
            "email": email,
            "tax_id": tax_id,
            "tax_id_type": tax_id_type,
            "address_line1": address_line1,
            "address_line2": address_line2,
            "address_city": address_city,
            "address_state": address_state,
            "address_postal_code": address_postal_code,
            "address_country": address_country,
        }
        changes = {k: v for k, v in given.items() if v is not UNSET}
        return Call(BillingInfoOut.model_validate, json=changes, idempotency_key=idempotency_key)

    # --- cards and payments -----------------------------------------------------------

    @program
    def _processor_config(self) -> Program[StripeConfigOut]:
        if self._stripe_config is None:
            self._stripe_config = yield from self._plan.get_stripe_config()
        return self._stripe_config

    @program
    def create_payment_method(
        self,
        card_number: str,
        exp_month: int,
        exp_year: int,
        cvc: str,
        *,
        idempotency_key: str | None = None,
    ) -> Program[str]:
        """Tokenize a card at the processor (`api_base` and publishable key from
        get_stripe_config: the sandbox or Stripe); card data never reaches Billfold's API.
        Answers the PaymentMethod id (pm_…)."""
        config = yield from self._plan._processor_config()
        call = Call(
            ProcessorPaymentMethod.model_validate,
            url=f"{config.api_base.rstrip('/')}/v1/payment_methods",
            form={"type": "card", **_card_form(card_number, exp_month, exp_year, cvc, "card")},
            basic_auth=(config.publishable_key, ""),
            idempotency_key=idempotency_key,
            kind="processor",
        )
        method = yield from perform(self, "POST", "", call)
        return method.id

    @program
    def confirm_setup_intent(
        self,
        setup_intent: SetupIntentOut,
        card_number: str | None = None,
        exp_month: int | None = None,
        exp_year: int | None = None,
        cvc: str | None = None,
        *,
        payment_method_id: str | None = None,
    ) -> Program[ProcessorSetupIntent]:
        """Confirm a setup intent at the processor, with card data or an existing pm_…;
        `payment_method` of the answer is the card to add with add_payment_method."""
        config = yield from self._plan._processor_config()
        form: dict[str, Any] = {"client_secret": setup_intent.client_secret}
        if payment_method_id is not None:
            form["payment_method"] = payment_method_id
        else:
            if card_number is None or exp_month is None or exp_year is None or cvc is None:
                raise ValueError("give the card's number, exp_month, exp_year and cvc")
            form["payment_method_data[type]"] = "card"
            form.update(
                _card_form(card_number, exp_month, exp_year, cvc, "payment_method_data[card]")
            )
        call = Call(
            ProcessorSetupIntent.model_validate,
            url=f"{config.api_base.rstrip('/')}/v1/setup_intents/"
            f"{setup_intent.setup_intent_id}/confirm",
            form=form,
            basic_auth=(config.publishable_key, ""),
            kind="processor",
        )
        return (yield from perform(self, "POST", "", call))

    @route("POST", "/billing/setup-intent")
    def create_setup_intent(self, *, idempotency_key: str | None = None) -> Call[SetupIntentOut]:
        """Start saving a card without charging it (confirm with confirm_setup_intent)."""
        return Call(SetupIntentOut.model_validate, idempotency_key=idempotency_key)

    @route("GET", "/billing/payment-methods")
    def list_payment_methods(self) -> Call[PaymentMethodList]:
        return Call(PaymentMethodList.model_validate)

    @route("POST", "/billing/payment-methods")
    def add_payment_method(
        self,
        payment_method_id: str,
        make_default: bool = True,
        *,
        idempotency_key: str | None = None,
    ) -> Call[PaymentMethodOut]:
        return Call(
            PaymentMethodOut.model_validate,
            json={"payment_method_id": payment_method_id, "make_default": make_default},
            idempotency_key=idempotency_key,
        )

    @route("PUT", "/billing/payment-methods/{payment_method_id}/default")
    def set_default_payment_method(
        self, payment_method_id: str, *, idempotency_key: str | None = None
    ) -> Call[PaymentMethodOut]:
        return Call(
            PaymentMethodOut.model_validate,
            path_params={"payment_method_id": payment_method_id},
            idempotency_key=idempotency_key,
        )

    @route("DELETE", "/billing/payment-methods/{payment_method_id}")
    def remove_payment_method(
        self, payment_method_id: str, *, idempotency_key: str | None = None
    ) -> Call[RemovedPaymentMethodOut]:
        return Call(
            RemovedPaymentMethodOut.model_validate,
            path_params={"payment_method_id": payment_method_id},
            idempotency_key=idempotency_key,
        )

    @route("GET", "/payments/{payment_intent_id}/status")
    def get_payment_status(self, payment_intent_id: str) -> Call[PaymentOut]:
        return Call(PaymentOut.model_validate, path_params={"payment_intent_id": payment_intent_id})

    # --- payment links ----------------------------------------------------------------

    @route("POST", "/billing/payment-link")
    def create_payment_link(
        self,
        purpose: Literal["fund", "subscribe"],
        amount: Amount | None = None,
        plan_id: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Call[PaymentLinkOut]:
        """A hosted payment page for a human (`payment_url`, `session_id`, `expires_at`)."""
        return Call(
            PaymentLinkOut.model_validate,
            json=body(purpose=purpose, amount=amount, plan_id=plan_id),
            idempotency_key=idempotency_key,
        )

    @route("POST", "/wallet/confirm-checkout")
    def confirm_wallet_checkout(self, session_id: str) -> Call[ConfirmedCheckoutOut]:
        """Raises CheckoutNotCompleted until the human paid, CheckoutExpired after expiry."""
        return Call(ConfirmedCheckoutOut.model_validate, json={"session_id": session_id})

    @route("POST", "/subscriptions/confirm-checkout")
    def confirm_subscription_checkout(self, session_id: str) -> Call[ConfirmedSubscriptionOut]:
        return Call(ConfirmedSubscriptionOut.model_validate, json={"session_id": session_id})

    # --- invoices ---------------------------------------------------------------------

    @route("GET", "/billing/invoices")
    def list_invoices(self, limit: int = 50, offset: int = 0) -> Call[InvoicePage]:
        return Call(InvoicePage.model_validate, params={"limit": limit, "offset": offset})

    @route("GET", "/billing/invoices/{invoice_id}")
    def get_invoice(self, invoice_id: str) -> Call[InvoiceOut]:
        return Call(InvoiceOut.model_validate, path_params={"invoice_id": invoice_id})

    @route("GET", "/billing/invoices/{invoice_id}/pdf")
    def get_invoice_pdf(self, invoice_id: str) -> Call[InvoicePdfLinkOut]:
        """A signed link to the PDF, valid 15 minutes, that needs no token."""
        return Call(InvoicePdfLinkOut.model_validate, path_params={"invoice_id": invoice_id})

    @program
    def download_invoice_pdf(self, invoice_id: str, path: str | Path) -> Program[Path]:
        """Fetch the invoice's PDF through its signed link and write it to `path`."""
        link = yield from self._plan.get_invoice_pdf(invoice_id)
        url = str(httpx.URL(self.base_url + "/").join(link.url))
        content: bytes = yield from perform(
            self, "GET", "", Call(bytes, url=url, anonymous=True, kind="raw")
        )
        target = Path(path)
        target.write_bytes(content)
        return target

    # --- wallet -----------------------------------------------------------------------

    @route("GET", "/wallet/balance")
    def get_wallet_balance(self) -> Call[BalanceOut]:
        return Call(BalanceOut.model_validate)

    @route("GET", "/wallet/transactions")
    def get_wallet_transactions(
        self, type: Literal["credit", "debit"] | None = None, limit: int = 50, offset: int = 0
    ) -> Call[TransactionPage]:
        """The wallet's ledger, newest first."""
        return Call(
            TransactionPage.model_validate, params={"type": type, "limit": limit, "offset": offset}
        )

    @route("POST", "/wallet/fund")
    def fund_wallet(
        self,
        amount: Amount,
        payment_method_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Call[FundOut]:
        """Charge a card (this one, or the default) and credit the wallet. A decline raises
        PaymentDeclined (its `payment` is the recorded charge)."""
        return Call(
            FundOut.model_validate,
            json=body(amount=amount, payment_method_id=payment_method_id),
            idempotency_key=idempotency_key,
        )

    @route("PUT", "/wallet/auto-funding")
    def enable_auto_funding(
        self,
        auto_charge_amount: Amount,
        charge_threshold: Amount,
        *,
        idempotency_key: str | None = None,
    ) -> Call[AutoFundingOut]:
        """Charge the default card `auto_charge_amount` when the balance drops under
        `charge_threshold`."""
        return Call(
            AutoFundingOut.model_validate,
            json={"auto_charge_amount": auto_charge_amount, "charge_threshold": charge_threshold},
            idempotency_key=idempotency_key,
        )

    @route("DELETE", "/wallet/auto-funding")
    def disable_auto_funding(self, *, idempotency_key: str | None = None) -> Call[AutoFundingOut]:
        return Call(AutoFundingOut.model_validate, idempotency_key=idempotency_key)

    @route("POST", "/wallet/withdraw")
    def withdraw(self, amount: Amount, *, idempotency_key: str | None = None) -> Call[WithdrawOut]:
        """Refund purchased credit to its cards; InsufficientFunds if it is not there."""
        return Call(
            WithdrawOut.model_validate, json={"amount": amount}, idempotency_key=idempotency_key
        )

    # --- coupons ----------------------------------------------------------------------

    @route("GET", "/wallet/coupons/validate")
    def validate_coupon(
        self, coupon_code: str, purchase_amount: Amount | None = None
    ) -> Call[CouponValidation]:
        """Whether the coupon can be redeemed: `valid`, and `error` when it cannot."""
        return Call(
            _coupon_validation,
            params={"coupon_code": coupon_code, "purchase_amount": purchase_amount},
        )

    @route("POST", "/wallet/coupons/redeem")
    def redeem_coupon(
        self,
        coupon_code: str,
        payment_method_id: str | None = None,
        purchase_amount: Amount | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Call[RedemptionOut]:
        return Call(
            RedemptionOut.model_validate,
            json=body(
                coupon_code=coupon_code,
                payment_method_id=payment_method_id,
                purchase_amount=purchase_amount,
            ),
            idempotency_key=idempotency_key,
        )

    # --- plans and subscriptions ------------------------------------------------------

    @route("GET", "/subscriptions/plans")
    def list_plans(self) -> Call[PlansOut]:
        return Call(PlansOut.model_validate)

    @route("GET", "/subscriptions")
    def list_subscriptions(self) -> Call[SubscriptionListOut]:
        return Call(SubscriptionListOut.model_validate)

    @route("POST", "/subscriptions")
    def create_subscription(
        self, plan_id: int, success_url: str | None = None, *, idempotency_key: str | None = None
    ) -> Call[SubscribeLinkOut]:
        """A checkout link for a human to start the subscription (`checkout_url`)."""
        return Call(
            SubscribeLinkOut.model_validate,
            json=body(plan_id=plan_id, success_url=success_url),
            idempotency_key=idempotency_key,
        )

    @route("POST", "/subscriptions")
    def create_subscription_headless(
        self, plan_id: int, payment_method_id: str, *, idempotency_key: str | None = None
    ) -> Call[SubscriptionOut]:
        """Start a subscription now, charging the first period to the card."""
        return Call(
            _subscription_result,
            json={"plan_id": plan_id, "payment_method_id": payment_method_id},
            idempotency_key=idempotency_key,
        )

    @route("GET", "/subscriptions/{subscription_id}")
    def get_subscription(self, subscription_id: str) -> Call[SubscriptionOut]:
        return Call(_subscription_result, path_params={"subscription_id": subscription_id})

    @route("GET", "/subscriptions/{subscription_id}/status")
    def get_subscription_status(self, subscription_id: str) -> Call[SubscriptionOut]:
        return Call(_subscription_result, path_params={"subscription_id": subscription_id})

    @route("PUT", "/subscriptions/{subscription_id}")
    def update_subscription(
        self, subscription_id: str, new_plan_id: int, *, idempotency_key: str | None = None
    ) -> Call[SubscriptionOut]:
        """Upgrade now (prorated) or downgrade at the period's end."""
        return Call(
            _subscription_result,
            path_params={"subscription_id": subscription_id},
            json={"new_plan_id": new_plan_id},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/subscriptions/{subscription_id}/pause")
    def pause_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> Call[SubscriptionOut]:
        return Call(
            _subscription_result,
            path_params={"subscription_id": subscription_id},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/subscriptions/{subscription_id}/resume")
    def resume_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> Call[SubscriptionOut]:
        return Call(
            _subscription_result,
            path_params={"subscription_id": subscription_id},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/subscriptions/{subscription_id}/reset-cycle")
    def reset_subscription_cycle(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> Call[SubscriptionOut]:
        return Call(
            _subscription_result,
            path_params={"subscription_id": subscription_id},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/subscriptions/{subscription_id}/cancel")
    def cancel_subscription(
        self,
        subscription_id: str,
        at_period_end: bool = True,
        *,
        idempotency_key: str | None = None,
    ) -> Call[SubscriptionOut]:
        """At the period's end (default), or now, crediting the unused time."""
        return Call(
            _subscription_result,
            path_params={"subscription_id": subscription_id},
            json={"at_period_end": at_period_end},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/subscriptions/{subscription_id}/fix-payment")
    def fix_payment(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> Call[SubscriptionOut]:
        """Retry the failed payment now with the current default card."""
        return Call(
            _subscription_result,
            path_params={"subscription_id": subscription_id},
            idempotency_key=idempotency_key,
        )

    @route("POST", "/subscriptions/charge-amount")
    def charge_subscription_amount(
        self,
        amount: Amount,
        payment_method_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Call[ChargeAmountOut]:
        """A one-off charge ($5 to $10,000) to the default card, credited to the wallet."""
        return Call(
            ChargeAmountOut.model_validate,
            json=body(amount=amount, payment_method_id=payment_method_id),
            idempotency_key=idempotency_key,
        )

    # --- the reference's helpers, done right ------------------------------------------

    @program
    def ensure_account_funded(
        self,
        min_balance: Amount,
        top_up_amount: Amount,
        *,
        payment_method_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Program[FundingCheck]:
        """Fund `top_up_amount` only if the balance is below `min_balance`, under one
        Idempotency-Key (retries of the top-up charge once)."""
        balance = (yield from self._plan.get_wallet_balance()).balance
        if balance >= Decimal(str(min_balance)):
            return FundingCheck(funded=False, balance=balance, previous_balance=balance)
        key = idempotency_key or new_idempotency_key()
        funding = yield from self._plan.fund_wallet(
            top_up_amount, payment_method_id, idempotency_key=key
        )
        return FundingCheck(
            funded=True,
            balance=funding.balance,
            previous_balance=balance,
            funding=funding,
            idempotency_key=key,
        )

    @program
    def fund_via_human(
        self,
        amount: Amount,
        *,
        poll_interval: float = 5,
        max_wait: float = 300,
        on_link: Callable[[PaymentLinkOut], object] | None = None,
        idempotency_key: str | None = None,
    ) -> Program[ConfirmedCheckoutOut]:
        """Create a fund link, hand it to `on_link` (forward `payment_url` to the human),
        then poll confirm_wallet_checkout until paid. Only CheckoutNotCompleted keeps it
        polling; any other error is raised. CheckoutExpired at the link's expiry,
        TimeoutError after `max_wait` seconds."""
        link = yield from self._plan.create_payment_link(
            "fund", amount, idempotency_key=idempotency_key
        )
        return (
            yield from _await_checkout(
                link, self._plan.confirm_wallet_checkout, on_link, poll_interval, max_wait
            )
        )

    @program
    def subscribe_via_human(
        self,
        plan_id: int,
        *,
        poll_interval: float = 5,
        max_wait: float = 300,
        on_link: Callable[[PaymentLinkOut], object] | None = None,
        idempotency_key: str | None = None,
    ) -> Program[ConfirmedSubscriptionOut]:
        """fund_via_human for a subscription: a subscribe link, polled with
        confirm_subscription_checkout."""
        link = yield from self._plan.create_payment_link(
            "subscribe", plan_id=plan_id, idempotency_key=idempotency_key
        )
        return (
            yield from _await_checkout(
                link, self._plan.confirm_subscription_checkout, on_link, poll_interval, max_wait
            )
        )


def _await_checkout(
    link: PaymentLinkOut,
    confirm: Callable[[str], Program[Any]],
    on_link: Callable[[PaymentLinkOut], object] | None,
    poll_interval: float,
    max_wait: float,
) -> Program[Any]:
    if on_link is not None:
        yield Notify(on_link, link)
    deadline = time.monotonic() + max_wait
    expires_at = link.expires_at if link.expires_at.tzinfo else link.expires_at.replace(tzinfo=UTC)
    while True:
        try:
            return (yield from confirm(link.session_id))
        except CheckoutNotCompleted:
            pass
        until_expiry = (expires_at - datetime.now(UTC)).total_seconds()
        if until_expiry <= 0:
            raise CheckoutExpired(
                ErrorCode.CHECKOUT_EXPIRED.value,
                "The payment link expired before it was paid; create a new one.",
                {"session_id": link.session_id, "expires_at": link.expires_at.isoformat()},
                410,
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"payment link {link.session_id} not paid within {max_wait} seconds")
        yield Sleep(max(0.0, min(poll_interval, remaining, until_expiry)))


class _AgentPlanner(Planner, AgentAPI):
    """AgentAPI's methods as programs, for helpers that compose them."""


AGENT_ROUTES: dict[tuple[str, str], tuple[str, ...]] = routes_of(AgentAPI)
"""Every agent route (METHOD, /api/agents/v1/…) → the SDK methods that call it."""


class Billfold(SyncCore, AgentAPI):
    """The agent API, synchronously: `Billfold("http://127.0.0.1:8000", token)`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
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
            token,
            timeout=timeout,
            max_retries=max_retries,
            transport=transport,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_retry_wait=max_retry_wait,
            http_client=http_client,
        )

    @property
    def token(self) -> str | None:
        return self.credential


class AsyncBillfold(AsyncCore, AgentAPI):
    """The agent API on asyncio/trio: the same methods as `Billfold`, awaited."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
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
            token,
            timeout=timeout,
            max_retries=max_retries,
            transport=transport,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_retry_wait=max_retry_wait,
            http_client=http_client,
        )

    @property
    def token(self) -> str | None:
        return self.credential
