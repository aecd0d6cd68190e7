"""The Stripe processor end to end against localstripe (tests/stripe_fake.py): payment links
on Stripe Checkout, inbound webhooks (signatures, replays, races), dashboard refunds,
disputes, and faults between Billfold and Stripe (timeouts after the charge, a process
killed before recording, 500s and 429s) that must neither lose nor double money."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
import stripe
from sqlalchemy import func, select

from billfold.application.jobs import Worker
from billfold.clock import now
from billfold.invoices.models import Invoice
from billfold.payments import janitor
from billfold.payments.models import Payment, PaymentAttempt
from billfold.processors.stripe import StripeProcessor, stripe_idempotency_key
from billfold.services import Services
from billfold.wallet import funding as wallet_funding
from tests.conftest import STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET
from tests.helpers import CARD_OK, CARD_REQUIRES_AUTH, Agent, Api, assert_error

PROCESSORS = ("stripe",)
SK = {"Authorization": f"Bearer {STRIPE_SECRET_KEY}"}


# --- helpers ------------------------------------------------------------------------------


def _signed(payload: bytes, *, secret: str = STRIPE_WEBHOOK_SECRET, at: int | None = None) -> str:
    timestamp = int(time.time()) if at is None else at
    signature = stripe.WebhookSignature._compute_signature(
        f"{timestamp}.{payload.decode()}", secret
    )
    return f"t={timestamp},v1={signature}"


def _event(event_type: str, obj: dict[str, Any]) -> bytes:
    event = {
        "id": f"evt_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }
    return json.dumps(event).encode()


def _post_event(api: Api, payload: bytes, signature: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return requests.post(f"{api.base_url}/webhooks/stripe", data=payload, headers=headers)


def _fake(stripe_fake_url: str, method: str, path: str, **kwargs: Any) -> Any:
    response = requests.request(method, f"{stripe_fake_url}{path}", headers=SK, **kwargs)
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def _faults(stripe_fake_url: str, faults: list[dict[str, Any]]) -> None:
    requests.post(f"{stripe_fake_url}/_test/faults", json=faults, headers=SK).raise_for_status()


def _requests(stripe_fake_url: str, path_part: str) -> list[dict[str, Any]]:
    logged = _fake(stripe_fake_url, "GET", "/_test/requests")
    return [r for r in logged if path_part in r["path"]]


def _payments(services: Services, account_id: str) -> list[Payment]:
    with services.database.read() as session:
        return list(session.scalars(select(Payment).where(Payment.account_id == account_id)))


def _customer(services: Services, agent: Agent) -> str:
    from billfold.accounts.models import Account

    with services.database.read() as session:
        account = session.get(Account, agent.account_id)
        assert account is not None and account.processor_customer_id
        return account.processor_customer_id


def _intents_of(stripe_fake_url: str, customer: str) -> list[dict[str, Any]]:
    listed = _fake(stripe_fake_url, "GET", "/v1/payment_intents", params={"customer": customer})
    return list(listed["data"])


def _processor(services: Services, **overrides: Any) -> StripeProcessor:
    """Another client of the same Stripe (the fake), e.g. with a short timeout."""
    settings = services.settings
    assert settings.stripe_secret_key and settings.stripe_publishable_key
    return StripeProcessor(
        secret_key=settings.stripe_secret_key,
        publishable_key=settings.stripe_publishable_key,
        webhook_secret=settings.stripe_webhook_secret,
        api_base=settings.stripe_api_base,
        public_api_base=settings.stripe_public_api_base,
        **overrides,
    )


def _until(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- configuration ------------------------------------------------------------------------


def test_stripe_config_answers_the_publishable_key_and_where_to_tokenize(
    api: Api, services: Services, stripe_fake_url: str
) -> None:
    agent = api.new_agent()
    config = api.stripe_config(agent)
    assert config["processor"] == "stripe"
    assert config["publishable_key"] == services.settings.stripe_publishable_key
    assert config["api_base"] == stripe_fake_url  # https://api.stripe.com unless testing


def test_long_keys_fit_stripes_limit_and_stay_the_same() -> None:
    long_key = "fund:acct_x:" + "k" * 300
    sent = stripe_idempotency_key("charge", long_key)
    assert len(sent) <= 255
    assert sent == stripe_idempotency_key("charge", long_key)
    assert sent != stripe_idempotency_key("charge", long_key + "x")
    assert sent != stripe_idempotency_key("refund", long_key)


# --- payment links on Stripe Checkout -------------------------------------------------


def test_a_fund_link_is_paid_on_stripe_checkout_and_credited_once(
    api: Api, services: Services, stripe_fake_url: str
) -> None:
    agent = api.new_agent()
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 30}).json()["data"]
    body = {"session_id": link["session_id"]}
    assert_error(agent.post("/wallet/confirm-checkout", body), 409, "checkout_not_completed")
    opened = requests.get(link["payment_url"], allow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"].startswith(f"{stripe_fake_url}/checkout/cs_test_")
    # Opening it again sends the human to the same Checkout Session.
    again = requests.get(link["payment_url"], allow_redirects=False)
    assert again.headers["location"] == opened.headers["location"]
    paid = api.pay_link(link)
    assert paid.status_code == 200, paid.text
    # The human comes back to Billfold's page: the success page shows the session id.
    page = requests.get(link["payment_url"], allow_redirects=False)
    assert page.status_code == 200
    assert link["session_id"] in page.text
    answers = [agent.post("/wallet/confirm-checkout", body) for _ in range(3)]
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    assert agent.balance() == 30
    # The card is saved for off-session use (auto-funding), and charging it works.
    cards = agent.get("/billing/payment-methods").json()["data"]["items"]
    assert len(cards) == 1
    funded = agent.post("/wallet/fund", {"amount": 10, "payment_method_id": cards[0]["id"]})
    assert funded.status_code == 200, funded.text
    # The checkout.session.completed webhook comes too, and changes nothing.
    time.sleep(1.5)
    assert agent.balance() == 40
    assert len(_payments(services, agent.account_id)) == 2
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_the_webhook_alone_credits_a_paid_link(api: Api, stripe_fake_url: str) -> None:
    agent = api.new_agent()
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 25}).json()["data"]
    api.pay_link(link)
    # Nobody comes back and nobody confirms: localstripe's signed webhook records it.
    _until(lambda: agent.balance() == 25)
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_webhook_and_confirm_racing_credit_once(
    api: Api, services: Services, stripe_fake_url: str
) -> None:
    agent = api.new_agent()
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 40}).json()["data"]
    opened = requests.get(link["payment_url"], allow_redirects=False)
    checkout_id = opened.headers["location"].rsplit("/", 1)[1]
    paid = api.pay_link(link)
    assert paid.status_code == 200, paid.text
    session = _fake(stripe_fake_url, "GET", f"/v1/checkout/sessions/{checkout_id}")
    events = [_event("checkout.session.completed", session) for _ in range(4)]
    body = {"session_id": link["session_id"]}
    with ThreadPoolExecutor(8) as pool:
        hooks = [pool.submit(_post_event, api, e, _signed(e)) for e in events]
        confirms = [pool.submit(agent.post, "/wallet/confirm-checkout", body) for _ in range(4)]
        assert {f.result().status_code for f in hooks} == {200}
        assert {f.result().status_code for f in confirms} == {200}
    time.sleep(1.5)  # localstripe's own webhook too
    assert agent.balance() == 40
    assert len(_payments(services, agent.account_id)) == 1
    with services.database.read() as db:
        credited = db.scalar(
            select(func.count()).select_from(Invoice).where(Invoice.account_id == agent.account_id)
        )
    assert credited == 1


def test_a_subscribe_link_starts_the_subscription_on_stripe(api: Api) -> None:
    plan = api.admin_post(
        "/plans", {"name": f"Stripe plan {uuid.uuid4().hex[:6]}", "price": 15, "period": "month"}
    )
    assert plan.status_code == 201, plan.text
    agent = api.new_agent()
    link = agent.post(
        "/billing/payment-link", {"purpose": "subscribe", "plan_id": plan.json()["data"]["id"]}
    ).json()["data"]
    api.pay_link(link)
    confirmed = agent.post("/subscriptions/confirm-checkout", {"session_id": link["session_id"]})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["data"]["status"] == "active"
    cards = agent.get("/billing/payment-methods").json()["data"]
    assert cards["default_payment_method_id"] is not None  # renewals charge it


def test_authentication_required_answers_a_link_the_human_can_pay(api: Api) -> None:
    agent = api.new_agent()
    response = agent.fund(20, CARD_REQUIRES_AUTH, key=f"auth-{uuid.uuid4().hex}")
    error = assert_error(response, 402, "authentication_required")
    assert error["details"]["decline_code"] == "authentication_required"
    link = {
        "payment_url": error["details"]["payment_url"],
        "session_id": error["details"]["session_id"],
    }
    assert agent.balance() == 0
    api.pay_link(link, CARD_OK)
    confirmed = agent.post("/wallet/confirm-checkout", {"session_id": link["session_id"]})
    assert confirmed.status_code == 200, confirmed.text
    assert agent.balance() == 20


# --- inbound webhook signatures --------------------------------------------------------


def test_webhook_signatures_good_bad_stale_and_replayed(api: Api) -> None:
    payload = _event("customer.created", {"id": "cus_nobody", "object": "customer"})
    good = _post_event(api, payload, _signed(payload))
    assert good.status_code == 200, good.text
    assert good.json()["data"]["outcome"] == "ignored"
    replayed = _post_event(api, payload, _signed(payload))
    assert replayed.json()["data"]["outcome"] == "replayed"
    for signature in (
        None,
        _signed(payload, secret="whsec_wrong"),
        _signed(payload, at=int(time.time()) - 301),  # older than the 5-minute tolerance
        "t=1,v1=deadbeef",
        "garbage",
    ):
        assert_error(_post_event(api, payload, signature), 400, "webhook_signature_invalid")
    tampered = payload.replace(b"cus_nobody", b"cus_someone")
    assert_error(_post_event(api, tampered, _signed(payload)), 400, "webhook_signature_invalid")
    assert_error(_post_event(api, b"not json", _signed(b"not json")), 400)


# --- refunds and disputes made at Stripe --------------------------------------------------


def _funded(agent: Agent, amount: int) -> str:
    response = agent.fund(amount)
    assert response.status_code == 200, response.text
    pi: str = response.json()["data"]["payment_intent_id"]
    return pi


def test_a_dashboard_refund_is_reconciled_with_a_credit_note(
    api: Api, services: Services, stripe_fake_url: str
) -> None:
    agent = api.new_agent()
    pi = _funded(agent, 50)
    refund = _fake(
        stripe_fake_url, "POST", "/v1/refunds", data={"payment_intent": pi, "amount": 2000}
    )
    intent = _fake(stripe_fake_url, "GET", f"/v1/payment_intents/{pi}")
    charge = _fake(stripe_fake_url, "GET", f"/v1/charges/{intent['latest_charge']['id']}")
    payload = _event("charge.refunded", charge)
    for _ in range(2):  # the replay records nothing more
        assert _post_event(api, payload, _signed(payload)).status_code == 200
    assert agent.balance() == 30
    with services.database.read() as session:
        payment = session.get(Payment, pi)
        assert payment is not None and payment.refunded_micros == 20_000_000
    invoices = agent.get("/billing/invoices").json()["data"]["items"]
    notes = [i for i in invoices if i["object"] == "credit_note"]
    assert len(notes) == 1
    assert abs(Decimal(str(notes[0]["total"]))) == 20
    assert notes[0]["payment_intent_id"] in (pi, None)
    assert refund["id"]
    assert api.ledger_check(agent.account_id)["consistent"] is True
    # Billfold's own refunds are not taken for dashboard ones: a withdrawal then a webhook.
    withdrawn = agent.post("/wallet/withdraw", {"amount": 10}, key=f"w-{uuid.uuid4().hex}")
    assert withdrawn.status_code == 200, withdrawn.text
    charge = _fake(stripe_fake_url, "GET", f"/v1/charges/{intent['latest_charge']['id']}")
    payload = _event("charge.refunded", charge)
    assert _post_event(api, payload, _signed(payload)).status_code == 200
    assert agent.balance() == 20


def test_a_dispute_freezes_the_payments_withdrawable_credit(
    api: Api, services: Services, receiver: Any
) -> None:
    agent = api.new_agent()
    _funded(agent, 20)
    disputed = _funded(agent, 30)
    before = agent.get("/wallet/balance").json()["data"]
    assert Decimal(str(before["withdrawable"])) == 50
    dispute = {
        "id": f"dp_{uuid.uuid4().hex[:14]}",
        "object": "dispute",
        "amount": 3000,
        "payment_intent": disputed,
        "reason": "fraudulent",
        "status": "needs_response",
    }
    payload = _event("charge.dispute.created", dispute)
    assert _post_event(api, payload, _signed(payload)).status_code == 200
    after = agent.get("/wallet/balance").json()["data"]
    assert Decimal(str(after["withdrawable"])) == 20
    assert_error(agent.post("/wallet/withdraw", {"amount": 21}, key=f"w-{uuid.uuid4().hex}"), 402)
    with services.database.read() as session:
        payment = session.get(Payment, disputed)
        assert payment is not None and payment.disputed


def test_a_card_detached_at_stripe_leaves_the_account(api: Api, stripe_fake_url: str) -> None:
    agent = api.new_agent()
    pm = agent.card()
    assert agent.post("/billing/payment-methods", {"payment_method_id": pm}).status_code == 201
    _fake(stripe_fake_url, "POST", f"/v1/payment_methods/{pm}/detach")
    payload = _event("payment_method.detached", {"id": pm, "object": "payment_method"})
    assert _post_event(api, payload, _signed(payload)).status_code == 200
    assert agent.get("/billing/payment-methods").json()["data"]["items"] == []


# --- faults between Billfold and Stripe ----------------------------------------------------


def test_a_timeout_after_stripe_charged_is_settled_once_by_the_janitor(
    api: Api, services: Services, stripe_fake_url: str
) -> None:
    agent = api.new_agent()
    pm = agent.card()
    impatient = _processor(services, timeout_seconds=0.5, max_network_retries=0)
    _faults(
        stripe_fake_url,
        [{"method": "POST", "path": "^/v1/payment_intents$", "phase": "after", "delay": 2}],
    )
    with pytest.raises(stripe.APIConnectionError):
        wallet_funding.fund_wallet(
            services.database,
            impatient,
            account_id=agent.account_id,
            amount_micros=40_000_000,
            payment_method_id=pm,
            idempotency_key="timeout-1",
        )
    with services.database.read() as session:
        [attempt] = session.scalars(
            select(PaymentAttempt).where(PaymentAttempt.account_id == agent.account_id)
        ).all()
        assert attempt.state == "unknown"
    assert agent.balance() == 0  # nothing credited while Stripe's answer is unknown
    time.sleep(2)
    janitor.settle(services, attempt.id)
    janitor.settle(services, attempt.id)
    assert agent.balance() == 40
    assert len(_intents_of(stripe_fake_url, _customer(services, agent))) == 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


class ProcessDied(Exception):
    pass


class Dying:
    """The processor, seen from a process that dies right after Stripe charged."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)

    def charge(self, **kwargs: Any) -> Any:
        self.processor.charge(**kwargs)
        raise ProcessDied


def test_a_process_killed_after_the_charge_is_settled_once(
    api: Api, services: Services, stripe_fake_url: str
) -> None:
    agent = api.new_agent()
    with pytest.raises(ProcessDied):
        wallet_funding.fund_wallet(
            services.database,
            Dying(services.processor),  # type: ignore[arg-type]
            account_id=agent.account_id,
            amount_micros=25_000_000,
            payment_method_id=agent.card(),
            idempotency_key=None,
        )
    assert agent.balance() == 0
    Worker(services).drain(at=now() + timedelta(minutes=6))
    Worker(services).drain(at=now() + timedelta(minutes=6))
    assert agent.balance() == 25
    assert len(_intents_of(stripe_fake_url, _customer(services, agent))) == 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


@pytest.mark.parametrize(("status", "phase"), [(500, "before"), (500, "after"), (429, "before")])
def test_stripe_errors_are_retried_under_the_same_key_and_charge_once(
    api: Api, services: Services, stripe_fake_url: str, status: int, phase: str
) -> None:
    agent = api.new_agent()
    patient = _processor(services, rate_limit_backoff=(0.05, 0.1))
    pm = agent.card()
    marker = len(_requests(stripe_fake_url, "/v1/payment_intents"))
    _faults(
        stripe_fake_url,
        [{"method": "POST", "path": "^/v1/payment_intents$", "status": status, "phase": phase}],
    )
    funded = wallet_funding.fund_wallet(
        services.database,
        patient,
        account_id=agent.account_id,
        amount_micros=15_000_000,
        payment_method_id=pm,
        idempotency_key=f"retry-{status}-{phase}",
    )
    assert funded.payment.status == "succeeded"
    sent = [
        r
        for r in _requests(stripe_fake_url, "/v1/payment_intents")[marker:]
        if r["method"] == "POST"
    ]
    assert len(sent) == 2  # the failed try and its retry
    assert sent[0]["idempotency_key"] == sent[1]["idempotency_key"]
    assert sent[0]["idempotency_key"].startswith("billfold-charge-")
    assert len(_intents_of(stripe_fake_url, _customer(services, agent))) == 1
    assert agent.balance() == 15


def test_stripes_payment_intent_webhook_settles_an_interrupted_charge(
    api: Api, services: Services, stripe_fake_url: str
) -> None:
    """No janitor runs: localstripe's signed `payment_intent.succeeded` records the charge
    the dead process made, once."""
    agent = api.new_agent()
    with pytest.raises(ProcessDied):
        wallet_funding.fund_wallet(
            services.database,
            Dying(services.processor),  # type: ignore[arg-type]
            account_id=agent.account_id,
            amount_micros=35_000_000,
            payment_method_id=agent.card(),
            idempotency_key="webhook-settles-1",
        )
    _until(lambda: agent.balance() == 35)
    time.sleep(1.5)
    assert agent.balance() == 35
    assert len(_payments(services, agent.account_id)) == 1


def test_a_customer_deleted_at_stripe_forgets_its_cards(api: Api, services: Services) -> None:
    from billfold.accounts.models import Account

    agent = api.new_agent()
    assert (
        agent.post("/billing/payment-methods", {"payment_method_id": agent.card()}).status_code
        == 201
    )
    customer = _customer(services, agent)
    payload = _event("customer.deleted", {"id": customer, "object": "customer", "deleted": True})
    assert _post_event(api, payload, _signed(payload)).status_code == 200
    assert agent.get("/billing/payment-methods").json()["data"]["items"] == []
    with services.database.read() as session:
        account = session.get(Account, agent.account_id)
        assert account is not None and account.processor_customer_id is None
    # The next charge makes a new customer.
    assert agent.fund(10).status_code == 200
    assert _customer(services, agent) != customer


def test_the_janitor_finds_a_payment_taken_on_stripe_checkout(api: Api, services: Services) -> None:
    """The Checkout payment carries its attempt's key, so an attempt whose recording was cut
    off is settled from Stripe like any other."""
    from billfold.checkout.service import hosted_operation

    agent = api.new_agent()
    link = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 12}).json()["data"]
    assert api.pay_link(link).status_code == 200
    found = services.processor.find_charge(
        hosted_operation(link["session_id"]),
        customer_id=_customer(services, agent),
        since=now() - timedelta(minutes=1),
    )
    assert found is not None and found.succeeded
    _until(lambda: agent.balance() == 12)
    assert [p.id for p in _payments(services, agent.account_id)] == [found.payment_intent_id]
