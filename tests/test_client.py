"""The typed SDK `billfold.client` against the live servers (SQLite and PostgreSQL).

Every reference snippet, rewritten onto the SDK, runs here sync and async; the typed
errors, the automatic Idempotency-Key and the retries are checked on the real server (a
lost response) and on scripted transports (httpx.MockTransport).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import requests

from billfold.api.app import create_app
from billfold.client import (
    ADMIN_ROUTES,
    AGENT_ROUTES,
    ERROR_CLASSES,
    AsyncBillfold,
    AsyncBillfoldAdmin,
    AuthenticationRequired,
    Billfold,
    BillfoldAdmin,
    BillfoldError,
    CheckoutNotCompleted,
    Conflict,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
    PaymentDeclined,
    RateLimited,
    ServerError,
    Unauthenticated,
    error_class,
)
from billfold.errors import ErrorCode
from billfold.services import Services
from tests.helpers import CARD_DECLINED, CARD_OK, Agent, Api

PROCESSORS = ("sandbox", "stripe")  # create_payment_method tokenizes at either api_base
YEAR = date.today().year + 2
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05}


def client_for(api: Api, agent: Agent, **kwargs: Any) -> Billfold:
    return Billfold(api.base_url, agent.token, **{**FAST, **kwargs})


@pytest.fixture
def agent(api: Api) -> Agent:
    return api.new_agent()


class Blocking:
    """An AsyncBillfold whose coroutines are run to completion on a loop of its own, so
    each snippet test below runs on both clients unchanged."""

    def __init__(self, client: AsyncBillfold) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            outcome = attribute(*args, **kwargs)
            return (
                self._loop.run_until_complete(outcome) if inspect.isawaitable(outcome) else outcome
            )

        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def bf(request: pytest.FixtureRequest, api: Api, agent: Agent) -> Iterator[Billfold]:
    """The agent's client: `Billfold`, or `AsyncBillfold` behind `Blocking`."""
    if request.param == "sync":
        with client_for(api, agent) as client:
            yield client
        return
    blocking = Blocking(AsyncBillfold(api.base_url, agent.token, **FAST))
    try:
        yield cast(Billfold, blocking)
    finally:
        blocking.close()


@pytest.fixture
def admin(api: Api) -> Iterator[BillfoldAdmin]:
    with BillfoldAdmin(api.base_url, api.admin_key, **FAST) as client:
        yield client


def pay(api: Api, payment_url: str, number: str = CARD_OK) -> None:
    paid = api.pay_link({"payment_url": payment_url}, number)
    assert paid.status_code < 400, paid.text


def new_plan(admin: BillfoldAdmin, price: int, **kwargs: Any) -> int:
    plan = admin.create_plan(f"Plan {uuid.uuid4().hex[:6]}", price, "month", ["x"], **kwargs)
    return plan.id


class LoseFirstFunding(httpx.BaseTransport):
    """Forwards every request; the first /wallet/fund reaches the server (which commits),
    then its answer is 'lost' as a read timeout."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/wallet/fund"):
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) == 1:
                response.read()
                response.close()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLoseFirstFunding(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/wallet/fund"):
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- the reference's snippets on the SDK ---------------------------------------------


def test_headless_flow(api: Api, bf: Billfold) -> None:
    config = bf.get_stripe_config()
    assert config.api_base == api.tokenize_base
    pm_id = bf.create_payment_method(CARD_OK, 12, YEAR, "123")
    assert pm_id.startswith("pm_")

    result = bf.fund_wallet(25, payment_method_id=pm_id, idempotency_key="fund-25-first")
    assert result.status == "succeeded"
    assert result.amount == Decimal(25)
    assert isinstance(result.balance, Decimal)
    again = bf.fund_wallet(25, payment_method_id=pm_id, idempotency_key="fund-25-first")
    assert again.payment_intent_id == result.payment_intent_id

    balance = bf.get_wallet_balance()
    assert balance.balance == 25
    assert balance.currency == "USD"
    txns = bf.get_wallet_transactions(type="credit", limit=20)
    assert [t.amount for t in txns.items] == [25]
    assert txns.items[0].usecase == "wallet_funding"
    assert txns.wallet.balance == 25
    status = bf.get_payment_status(result.payment_intent_id)
    assert status.status == "succeeded"
    overview = bf.get_billing_overview()
    assert overview.wallet_balance == 25
    assert overview.recent_charges[0].payment_intent_id == result.payment_intent_id

    # Fractional amounts stay exact both ways.
    half = bf.fund_wallet(Decimal("10.55"), pm_id)
    assert half.amount == Decimal("10.55")
    assert bf.get_wallet_balance().balance == Decimal("35.55")

    # Same key, another payload: the server refuses it, typed.
    with pytest.raises(IdempotencyConflict) as refused:
        bf.fund_wallet(30, payment_method_id=pm_id, idempotency_key="fund-25-first")
    assert refused.value.code == "idempotency_key_reused"


def test_setup_intent_and_saved_cards(bf: Billfold) -> None:
    setup = bf.create_setup_intent()
    confirmed = bf.confirm_setup_intent(setup, CARD_OK, 12, YEAR, "123")
    assert confirmed.status == "succeeded"
    assert confirmed.payment_method is not None
    first = bf.add_payment_method(confirmed.payment_method, make_default=True)
    assert first.is_default
    second_id = bf.create_payment_method(CARD_OK, 11, YEAR, "123")
    second = bf.add_payment_method(second_id, make_default=False)
    assert not second.is_default

    cards = bf.list_payment_methods()
    assert {c.id for c in cards.items} == {first.id, second.id}
    assert cards.default_payment_method_id == first.id
    assert bf.set_default_payment_method(second.id).is_default
    removed = bf.remove_payment_method(first.id)
    assert removed.deleted
    assert [c.id for c in bf.list_payment_methods().items] == [second.id]

    # Funding with no card given charges the default one.
    assert bf.fund_wallet(50).payment_method_id == second.id
    with pytest.raises(NotFound) as missing:
        bf.remove_payment_method("pm_does_not_exist")
    assert missing.value.code == "payment_method_not_found"


def test_payment_link_and_confirm(api: Api, bf: Billfold) -> None:
    link = bf.create_payment_link("fund", amount=20)
    assert link.session_id
    assert link.amount == 20
    with pytest.raises(CheckoutNotCompleted) as pending:
        bf.confirm_wallet_checkout(link.session_id)
    assert pending.value.status == 409
    pay(api, link.payment_url)
    confirmed = bf.confirm_wallet_checkout(link.session_id)
    assert confirmed.balance == 20
    assert bf.confirm_wallet_checkout(link.session_id) == confirmed  # the same every time
    with pytest.raises(NotFound):
        bf.confirm_wallet_checkout("cs_nope")


def test_billing_info_and_invoices(api: Api, bf: Billfold, tmp_path: Path) -> None:
    info = bf.update_billing_info(name="Acme Corp", email="billing@acme.com", address_country="US")
    assert info.name == "Acme Corp"
    assert bf.update_billing_info(address_city="San Francisco").name == "Acme Corp"
    assert bf.update_billing_info(name=None).name is None  # None clears a field
    assert bf.get_billing_info().address_city == "San Francisco"
    with pytest.raises(InvalidRequest) as invalid:
        bf.update_billing_info(address_country="Narnia")
    assert invalid.value.status == 422

    funded = bf.fund_wallet(30, bf.create_payment_method(CARD_OK, 12, YEAR, "123"))
    page = bf.list_invoices()
    assert page.total == 1
    invoice = bf.get_invoice(page.items[0].id)
    assert invoice.payment_intent_id == funded.payment_intent_id
    assert invoice.total == 30
    assert invoice.lines
    link = bf.get_invoice_pdf(invoice.id)
    assert link.url
    saved = bf.download_invoice_pdf(invoice.id, tmp_path / "invoice.pdf")
    assert saved.read_bytes().startswith(b"%PDF")

    with client_for(api, api.new_agent()) as other, pytest.raises(NotFound) as hidden:
        other.get_invoice(invoice.id)
    assert hidden.value.code == "invoice_not_found"


def test_auto_funding_and_withdraw(bf: Billfold) -> None:
    pm_id = bf.create_payment_method(CARD_OK, 12, YEAR, "123")
    bf.add_payment_method(pm_id)
    rule = bf.enable_auto_funding(auto_charge_amount=25, charge_threshold=5)
    assert rule.enabled
    assert rule.auto_charge_amount == 25
    assert bf.get_wallet_balance().auto_funding.enabled
    assert not bf.disable_auto_funding().enabled

    bf.fund_wallet(20, pm_id)
    withdrawal = bf.withdraw(5)
    assert withdrawal.amount == 5
    assert withdrawal.balance == 15
    with pytest.raises(InsufficientFunds) as short:
        bf.withdraw(1000)
    assert short.value.status == 402
    assert short.value.withdrawable == 15


def test_coupons(api: Api, bf: Billfold, admin: BillfoldAdmin) -> None:
    code = f"WELCOME{uuid.uuid4().hex[:8].upper()}"
    coupon = admin.create_coupon(code, "credit", amount=5, max_redemptions=10)
    assert coupon.code == code
    assert code in {c.code for c in admin.list_coupons()}

    info = bf.validate_coupon(code)
    assert info.valid
    assert info.error is None
    redemption = bf.redeem_coupon(code)
    assert redemption.credit_amount == 5
    assert bf.get_wallet_balance().balance == 5
    again = bf.validate_coupon(code)
    assert not again.valid
    assert again.error is not None
    assert again.error.code == "coupon_already_redeemed"
    with pytest.raises(Conflict) as twice:
        bf.redeem_coupon(code)
    assert twice.value.code == "coupon_already_redeemed"
    assert not bf.validate_coupon("NO-SUCH-COUPON").valid
    assert admin.archive_coupon(code).status != coupon.status


def test_plans_and_subscriptions(
    api: Api, agent: Agent, bf: Billfold, admin: BillfoldAdmin
) -> None:
    cheap, dear = new_plan(admin, 10), new_plan(admin, 20)
    plans = bf.list_plans()
    assert {cheap, dear} <= {p.id for p in plans.subscription_plans}
    assert plans.pay_as_you_go.auto_payments.supported

    pm_id = bf.create_payment_method(CARD_OK, 12, YEAR, "123")
    sub = bf.create_subscription_headless(cheap, pm_id)
    assert sub.status == "active"
    assert bf.get_subscription_status(sub.id).plan_id == cheap
    assert bf.get_subscription(sub.id).id == sub.id
    upgraded = bf.update_subscription(sub.id, dear)
    assert upgraded.plan_id == dear
    paused = bf.pause_subscription(sub.id)
    assert paused.status == "paused"
    with pytest.raises(Conflict) as already:
        bf.pause_subscription(sub.id)
    assert already.value.code == "subscription_already_paused"
    assert bf.resume_subscription(sub.id).status == "active"
    reset = bf.reset_subscription_cycle(sub.id)
    assert reset.status == "active"
    with pytest.raises(Conflict) as nothing:
        bf.fix_payment(sub.id)
    assert nothing.value.code == "nothing_to_fix"
    charge = bf.charge_subscription_amount(5)
    assert charge.amount == 5
    canceled = bf.cancel_subscription(sub.id)
    assert canceled.cancel_at_period_end
    listed = bf.list_subscriptions()
    assert [s.id for s in listed.items] == [sub.id]
    assert admin.list_subscriptions(agent.account_id).items[0].id == sub.id
    assert bf.cancel_subscription(sub.id, at_period_end=False).status == "canceled"
    with pytest.raises(NotFound):
        bf.get_subscription_status("sub_nope")

    # The checkout path, for a human: a link, paid, confirmed.
    with client_for(api, api.new_agent()) as human:
        link = human.create_subscription(cheap)
        assert link.checkout_url
        with pytest.raises(CheckoutNotCompleted):
            human.confirm_subscription_checkout(link.session_id)
        pay(api, link.payment_url)
        started = human.confirm_subscription_checkout(link.session_id)
        assert started.status == "active"
        assert started.plan_id == cheap
    with client_for(api, api.new_agent()) as human:
        started = human.subscribe_via_human(
            cheap, poll_interval=0.05, max_wait=30, on_link=lambda lk: pay(api, lk.payment_url)
        )
        assert started.status == "active"


# --- typed errors ------------------------------------------------------------------------


def test_declined_card_raises_payment_declined(bf: Billfold) -> None:
    pm_id = bf.create_payment_method(CARD_DECLINED, 12, YEAR, "123")
    with pytest.raises(PaymentDeclined) as declined:
        bf.fund_wallet(25, pm_id)
    error = declined.value
    assert error.code == "payment_declined"
    assert error.status == 402
    assert error.decline_code == "generic_decline"
    assert error.payment is not None
    assert error.payment["status"] == "failed"
    assert error.request_id and error.request_id.startswith("req_")
    assert not isinstance(error, AuthenticationRequired)
    assert bf.get_wallet_balance().balance == 0


def test_logout_then_unauthenticated_and_login(api: Api, agent: Agent) -> None:
    with Billfold(api.base_url, **FAST) as fresh:
        token = fresh.login(agent.email, agent.password)
        assert fresh.token == token.access_token
        assert fresh.get_wallet_balance().balance == 0
        assert fresh.logout().revoked
        with pytest.raises(Unauthenticated):
            fresh.get_wallet_balance()
        with pytest.raises(Unauthenticated) as wrong:
            fresh.login(agent.email, "not the password")
        assert wrong.value.code == "invalid_credentials"


def test_every_catalogue_code_has_a_class() -> None:
    assert set(ERROR_CLASSES) == set(ErrorCode)
    for code in ErrorCode:
        if code.value.endswith("not_found"):
            assert ERROR_CLASSES[code] is NotFound, code
    for code in ("unauthenticated", "token_revoked", "token_expired", "invalid_credentials"):
        assert error_class(code) is Unauthenticated
    assert error_class("idempotency_key_reused") is IdempotencyConflict
    assert error_class("idempotency_request_in_progress") is IdempotencyConflict
    assert error_class("invalid_request") is InvalidRequest
    assert error_class("internal_error") is ServerError
    assert error_class("processor_error") is ServerError
    assert error_class("rate_limited") is RateLimited
    assert error_class("authentication_required") is AuthenticationRequired
    assert error_class("something_new") is BillfoldError


# --- idempotency and retries -------------------------------------------------------------


def test_lost_funding_response_is_retried_and_charges_once(api: Api, agent: Agent) -> None:
    transport = LoseFirstFunding()
    with client_for(api, agent, transport=transport) as bf:
        pm_id = bf.create_payment_method(CARD_OK, 12, YEAR, "123")
        funding = bf.fund_wallet(40, pm_id)
        assert funding.balance == 40
        assert len(transport.keys) == 2
        assert transport.keys[0] is not None
        assert transport.keys[0] == transport.keys[1]
        assert bf.get_wallet_balance().balance == 40
        assert bf.get_wallet_transactions().total == 1
        assert len(bf.get_billing_overview().recent_charges) == 1


def scripted(answers: list[httpx.Response | Exception]) -> tuple[httpx.MockTransport, list[Any]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def envelope_error(status: int, code: str, **headers: str) -> httpx.Response:
    error = {"code": code, "message": code, "details": {}, "request_id": "req_x"}
    return httpx.Response(status, json={"error": error}, headers=headers)


BALANCE = {
    "data": {
        "auto_funding": {
            "enabled": False,
            "auto_charge_amount": None,
            "charge_threshold": None,
            "consecutive_failures": 0,
            "disabled_reason": None,
        },
        "balance": 1.5,
        "currency": "USD",
        "breakdown": {"subscription": 0, "promotional": 0, "purchased": 1.5},
        "withdrawable": 1.5,
        "available": 1.5,
        "held": 0,
    }
}


def test_retries_5xx_429_and_in_progress_with_one_key() -> None:
    ok = httpx.Response(200, content=json.dumps(BALANCE["data"] | {}).encode())
    transport, seen = scripted(
        [
            envelope_error(503, "internal_error"),
            httpx.ConnectError("refused"),
            envelope_error(429, "rate_limited", **{"Retry-After": "0"}),
            envelope_error(409, "idempotency_request_in_progress", **{"Retry-After": "0"}),
            httpx.Response(200, json={"data": {"revoked": True}}),
        ]
    )
    del ok
    with Billfold("http://billfold.test", "tok", transport=transport, max_retries=4, **FAST) as bf:
        assert bf.logout().revoked
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 5
    assert len(keys) == 1
    assert seen[0].headers["Authorization"] == "Bearer tok"


def test_gives_up_after_max_retries_and_never_retries_other_4xx() -> None:
    transport, seen = scripted([envelope_error(500, "internal_error")] * 4)
    with Billfold("http://billfold.test", "t", transport=transport, max_retries=3, **FAST) as bf:  # noqa: SIM117
        with pytest.raises(ServerError):
            bf.get_wallet_balance()
    assert len(seen) == 4
    transport, seen = scripted([envelope_error(422, "invalid_request")])
    with Billfold("http://billfold.test", "t", transport=transport, **FAST) as bf:  # noqa: SIM117
        with pytest.raises(InvalidRequest):
            bf.withdraw(5)
    assert len(seen) == 1
    transport, seen = scripted([httpx.Response(200, content=json.dumps(BALANCE).encode())])
    with Billfold("http://billfold.test", "t", transport=transport, **FAST) as bf:
        balance = bf.get_wallet_balance()
    assert balance.balance == Decimal("1.5")
    assert "Idempotency-Key" not in seen[0].headers  # reads carry none


def test_backoff_is_exponential_and_capped() -> None:
    with Billfold("http://billfold.test", "t") as bf:
        assert [bf.backoff(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


# --- the helpers ---------------------------------------------------------------------------


def test_ensure_account_funded_funds_once(bf: Billfold) -> None:
    pm_id = bf.create_payment_method(CARD_OK, 12, YEAR, "123")
    first = bf.ensure_account_funded(10, 50, payment_method_id=pm_id)
    assert first.funded
    assert first.previous_balance == 0
    assert first.balance == 50
    assert first.funding is not None
    second = bf.ensure_account_funded(10, 50, payment_method_id=pm_id)
    assert not second.funded
    assert second.balance == 50
    assert bf.get_wallet_transactions().total == 1


def test_fund_via_human(api: Api, bf: Billfold) -> None:
    links: list[Any] = []

    def human_pays(link: Any) -> None:
        links.append(link)
        pay(api, link.payment_url)

    confirmed = bf.fund_via_human(30, poll_interval=0.05, max_wait=30, on_link=human_pays)
    assert confirmed.balance == 30
    assert confirmed.session_id == links[0].session_id

    with pytest.raises(TimeoutError):
        bf.fund_via_human(30, poll_interval=0.1, max_wait=0.5, on_link=links.append)
    assert bf.get_wallet_balance().balance == 30


def test_fund_via_human_stops_on_other_errors(api: Api, agent: Agent) -> None:
    confirms: list[str] = []

    def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/confirm-checkout"):
            confirms.append(request.url.path)

    def revoke(link: Any) -> None:  # the token dies while the human is paying
        requests.delete(
            api.agent_url("/auth/tokens/current"), headers=agent.headers, timeout=10
        ).raise_for_status()

    http = httpx.Client(event_hooks={"request": [count]})
    with Billfold(api.base_url, agent.token, http_client=http, **FAST) as bf:  # noqa: SIM117
        with pytest.raises(Unauthenticated):
            bf.fund_via_human(20, poll_interval=0.05, max_wait=30, on_link=revoke)
    http.close()
    assert len(confirms) == 1


# --- async -------------------------------------------------------------------------------


def test_async_client(api: Api, agent: Agent, tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = AsyncLoseFirstFunding()
        async with AsyncBillfold(api.base_url, agent.token, transport=transport, **FAST) as bf:
            pm_id = await bf.create_payment_method(CARD_OK, 12, YEAR, "123")
            funding = await bf.fund_wallet(25, pm_id)  # its first answer is lost
            assert funding.balance == 25
            assert transport.keys[0] == transport.keys[1]
            assert (await bf.get_wallet_balance()).balance == 25
            assert (await bf.get_wallet_transactions()).total == 1

            async def human_pays(link: Any) -> None:
                await asyncio.to_thread(pay, api, link.payment_url)

            confirmed = await bf.fund_via_human(
                20, poll_interval=0.05, max_wait=30, on_link=human_pays
            )
            assert confirmed.balance == 45
            with pytest.raises(TimeoutError):
                await bf.fund_via_human(20, poll_interval=0.1, max_wait=0.3)
            declined_pm = await bf.create_payment_method(CARD_DECLINED, 12, YEAR, "123")
            with pytest.raises(PaymentDeclined) as declined:
                await bf.fund_wallet(25, declined_pm)
            assert declined.value.decline_code == "generic_decline"
            check = await bf.ensure_account_funded(10, 50)
            assert not check.funded
            invoices = await bf.list_invoices()
            assert invoices.total == 2
            saved = await bf.download_invoice_pdf(invoices.items[0].id, tmp_path / "a.pdf")
            assert saved.read_bytes().startswith(b"%PDF")
            with pytest.raises(InsufficientFunds):
                await bf.withdraw(500)

    asyncio.run(scenario())


# --- the operator's client ---------------------------------------------------------------


def test_admin_client(api: Api, admin: BillfoldAdmin) -> None:
    email = f"sdk-{uuid.uuid4().hex[:10]}@example.com"
    account = admin.create_account(email, "correct horse battery staple")
    assert admin.get_account(account.id).email == email
    token = admin.issue_token(account.id)
    with Billfold(api.base_url, token.access_token, **FAST) as bf:
        funding = bf.fund_wallet(20, bf.create_payment_method(CARD_OK, 12, YEAR, "123"))
        key = f"job-{uuid.uuid4().hex}"
        first = admin.create_usage_charge(account.id, Decimal("0.000125"), "llm_tokens", None, key)
        again = admin.create_usage_charge(account.id, Decimal("0.000125"), "llm_tokens", None, key)
        assert first.id == again.id
        assert first.amount == Decimal("0.000125")
        assert bf.get_wallet_balance().balance == Decimal("19.999875")
        with pytest.raises(InsufficientFunds):
            admin.create_usage_charge(account.id, 500, "llm_tokens")
        credit = admin.create_adjustment(account.id, 2, "goodwill")
        assert credit.amount == 2
        refund = admin.refund_payment(funding.payment_intent_id, "customer asked", 5)
        assert refund.amount == 5
        assert admin.ledger_check(account.id).consistent
        attempts = admin.list_payment_attempts(account_id=account.id)
        assert [a.state for a in attempts.items] == ["succeeded"]
        with pytest.raises(NotFound) as unknown:
            admin.get_account("acct_nope")
        assert unknown.value.code == "account_not_found"
        page = admin.list_accounts(email=email.upper())
        assert [a.id for a in page.items] == [account.id]
        assert page.total == 1
        assert not page.has_more
        # A wildcard is matched as itself: as a LIKE pattern each of these would match.
        for pattern in ("sdk%" + email[4:], "sdk_" + email[4:]):
            assert admin.list_accounts(email=pattern).total == 0, pattern
        admin.create_account(f"sdk-{uuid.uuid4().hex[:10]}@example.com", "another password")
        assert admin.list_accounts(limit=1).has_more

        plan = admin.create_plan("SDK plan", 12, "month", ["a"])
        assert plan.id in {p.id for p in admin.list_plans()}
        assert admin.get_plan(plan.id).price == 12
        assert admin.update_plan(plan.id, name="SDK plan 2").name == "SDK plan 2"
        assert admin.archive_plan(plan.id).status == "archived"

    clock = admin.create_test_clock("sdk clock")
    moved = admin.advance_test_clock(clock.id, days=2)
    assert moved.advanced_seconds == 2 * 86_400
    assert admin.get_test_clock(clock.id).now >= moved.now
    with pytest.raises(Unauthenticated):
        BillfoldAdmin(api.base_url, "wrong-key").list_plans()


def test_admin_client_sends_a_batch(api: Api, admin: BillfoldAdmin) -> None:
    agent = api.new_agent()
    assert agent.fund(10).status_code == 200
    run = uuid.uuid4().hex[:8]
    charges = [
        {
            "account_id": agent.account_id,
            "amount": amount,
            "usecase": "llm_tokens",
            "idempotency_key": f"{run}-{n}",
        }
        for n, amount in enumerate([Decimal("2.5"), Decimal("5"), Decimal("50")])
    ]
    first = admin.create_usage_charges_batch(charges)
    assert [i.status for i in first.items] == ["charged", "charged", "insufficient_funds"]
    assert (first.charged, first.replayed, first.refused) == (2, 0, 1)
    assert first.items[1].charge is not None and first.items[1].charge.amount == 5
    assert first.items[2].error is not None and first.items[2].error.code == "insufficient_funds"
    again = admin.create_usage_charges_batch(charges[:2])
    assert [i.status for i in again.items] == ["replayed", "replayed"]
    assert [i.charge.id for i in again.items if i.charge] == [
        i.charge.id for i in first.items[:2] if i.charge
    ]
    assert agent.balance() == Decimal("2.5")


# --- coverage of the API -----------------------------------------------------------------


def test_every_reference_function_is_an_sdk_method() -> None:
    """The reference's helpers by their names, on both clients (the token is the client's)."""
    reference = Path(__file__).with_name("reference.py").read_text()
    names = set(re.findall(r"^def (\w+)\(token", reference, flags=re.MULTILINE))
    names = (names - {"headers"}) | {"create_payment_method"}  # the client holds the token
    assert len(names) > 30
    for name in sorted(names):
        assert callable(getattr(Billfold("http://x", "t"), name, None)), name
        assert hasattr(AsyncBillfold, name), name


@pytest.mark.parametrize(
    ("prefix", "table", "client", "async_client"),
    [
        ("/api/agents/v1", AGENT_ROUTES, Billfold, AsyncBillfold),
        ("/api/admin/v1", ADMIN_ROUTES, BillfoldAdmin, AsyncBillfoldAdmin),
    ],
    ids=["agent", "admin"],
)
def test_every_route_has_an_sdk_method(
    services: Services,
    prefix: str,
    table: dict[tuple[str, str], tuple[str, ...]],
    client: type,
    async_client: type,
) -> None:
    document = create_app(services).openapi()
    routes = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path.startswith(prefix)
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert set(table) == routes
    for names in table.values():
        for name in names:
            assert callable(getattr(client("http://x", "k"), name)), name
            assert hasattr(async_client, name), name


def test_both_ways_to_subscribe_are_one_route() -> None:
    prefix = "/api/agents/v1"
    assert AGENT_ROUTES[("POST", f"{prefix}/subscriptions")] == (
        "create_subscription",
        "create_subscription_headless",
    )
