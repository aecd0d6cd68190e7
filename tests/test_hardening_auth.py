"""Issue 9, authentication and abuse: login throttling, setup-intent ownership, processor
refusals as 4xx, coupon reservations that never stay stuck, per-client limits of the
hosted page and tokenization, and the admin key kept out of start-up output."""

from __future__ import annotations

import secrets
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from sqlalchemy import delete, func, select

from billfold import ratelimit
from billfold.accounts import service as accounts
from billfold.application.jobs import Worker
from billfold.cli.main import admin_key_fingerprint, resolve_admin_key
from billfold.clock import now, wall_now
from billfold.config import Settings
from billfold.coupons import service as coupons
from billfold.coupons.models import CouponRedemption
from billfold.errors import RateLimited
from billfold.payments import attempts
from billfold.processors.sandbox import SandboxObject
from billfold.services import Services
from tests.conftest import LiveServer
from tests.helpers import (
    CARD_DECLINED,
    CARD_OK,
    Agent,
    Api,
    assert_error,
    bonus_coupon,
    fresh_window,
    jobs_of,
)

# --- clients at their own addresses ---------------------------------------------------------


class _FromAddress(HTTPAdapter):
    """Connect from a given local address: Linux routes all of 127.0.0.0/8 to loopback,
    so each test's client has an address of its own, as the server sees it."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def new_address() -> str:
    return f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def client_at(address: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", _FromAddress(address))
    return session


def login(client: requests.Session, api: Api, email: str, password: str, **kw: Any) -> Any:
    return client.post(
        api.agent_url("/auth/login"), json={"email": email, "password": password}, **kw
    )


# --- login throttling (defect 7) ------------------------------------------------------------


def test_parallel_wrong_passwords_are_evaluated_at_most_the_limit(
    api: Api, services: Services
) -> None:
    agent = api.new_agent()
    attacker = new_address()
    limit = services.settings.login_max_failures_per_email_client
    window = services.settings.login_window_seconds
    assert (limit, services.settings.login_max_failures_per_email, window) == (10, 100, 900)
    fresh_window(window, 30)
    start = threading.Barrier(30)

    def guess(n: int) -> requests.Response:
        client = client_at(attacker)
        start.wait()
        return login(client, api, agent.email, f"wrong password {n}")

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(guess, range(30)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [401] * limit + [429] * (30 - limit)  # only `limit` passwords checked
    for response in results:
        if response.status_code == 429:
            error = assert_error(response, 429, "rate_limited")
            assert int(response.headers["Retry-After"]) == error["details"]["retry_after_seconds"]
    pair_key = f"login:email_client:{agent.email}|{attacker}"
    with services.database.read() as session:
        assert ratelimit.count(session, pair_key, window) == limit

    # The real user, from anywhere else, still gets in…
    assert login(client_at(new_address()), api, agent.email, agent.password).status_code == 200
    # …but not from the throttled address, even with the right password, and a forged
    # X-Forwarded-For does not make it another client.
    from_attacker = client_at(attacker)
    assert_error(login(from_attacker, api, agent.email, agent.password), 429, "rate_limited")
    forged = {"X-Forwarded-For": new_address()}
    assert_error(login(from_attacker, api, agent.email, agent.password, headers=forged), 429)
    # Until the window has passed: windows are real time, which no test clock moves, so
    # the whole process (the server included) travels past it.
    with time_machine.travel(wall_now() + timedelta(seconds=window + 1), tick=True):
        assert login(from_attacker, api, agent.email, agent.password).status_code == 200


def test_the_right_password_forgives_that_clients_failures(api: Api, services: Services) -> None:
    agent = api.new_agent()
    client = client_at(new_address())
    limit = services.settings.login_max_failures_per_email_client
    fresh_window(services.settings.login_window_seconds, 30)
    for _ in range(limit - 1):
        assert_error(login(client, api, agent.email, "typo"), 401, "invalid_credentials")
    assert login(client, api, agent.email, agent.password).status_code == 200
    for _ in range(limit):  # a fresh budget: these are all checked
        assert_error(login(client, api, agent.email, "typo"), 401, "invalid_credentials")
    assert_error(login(client, api, agent.email, "typo"), 429, "rate_limited")


def test_failures_from_many_clients_are_capped_per_email(services: Services) -> None:
    """Distributed guessing: the per-email cap over all addresses (lowered to 5 here)."""
    limits = services.settings.model_copy(update={"login_max_failures_per_email": 5})
    email = f"target-{uuid.uuid4().hex[:8]}@example.com"
    for n in range(5):
        with services.database.transaction() as session:
            accounts.reserve_login_attempt(
                session, email=email, client=f"203.0.113.{n}", settings=limits
            )
    with pytest.raises(RateLimited), services.database.transaction() as session:
        accounts.reserve_login_attempt(session, email=email, client="203.0.113.99", settings=limits)
    window = limits.login_window_seconds
    with services.database.read() as session:  # the refused attempt counted nowhere
        assert ratelimit.count(session, "login:client:203.0.113.99", window) == 0
        assert ratelimit.count(session, f"login:email:{email}", window) == 5


# --- setup intents: client_secret and ownership (defect 8) ----------------------------------


def _setup_intent(agent: Agent) -> dict[str, Any]:
    response = agent.post("/billing/setup-intent")
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def _confirm(api: Api, setup: dict[str, Any], **form: Any) -> requests.Response:
    return requests.post(
        f"{api.base_url}/sandbox/v1/setup_intents/{setup['setup_intent_id']}/confirm",
        auth=("pk_test_billfold_sandbox", ""),
        data=form,
    )


def _card_data(number: str = CARD_OK) -> dict[str, Any]:
    return {
        "payment_method_data[type]": "card",
        "payment_method_data[card][number]": number,
        "payment_method_data[card][exp_month]": 12,
        "payment_method_data[card][exp_year]": 2030,
        "payment_method_data[card][cvc]": "123",
    }


def _saved_card(api: Api, agent: Agent) -> str:
    setup = _setup_intent(agent)
    confirmed = _confirm(api, setup, client_secret=setup["client_secret"], **_card_data())
    assert confirmed.json()["status"] == "succeeded", confirmed.text
    pm: str = confirmed.json()["payment_method"]
    saved = agent.post("/billing/payment-methods", {"payment_method_id": pm})
    assert saved.status_code == 201, saved.text
    return pm


def test_a_setup_intent_cannot_take_another_customers_card(api: Api) -> None:
    victim, attacker = api.new_agent(), api.new_agent()
    victims_card = _saved_card(api, victim)
    setup = _setup_intent(attacker)

    missing_secret = _confirm(api, setup, payment_method=victims_card)
    assert missing_secret.status_code == 400
    assert missing_secret.json()["error"]["param"] == "client_secret"
    wrong_secret = _confirm(
        api, setup, payment_method=victims_card, client_secret=setup["client_secret"] + "x"
    )
    assert wrong_secret.status_code == 404
    assert wrong_secret.json()["error"]["code"] == "resource_missing"
    foreign = _confirm(
        api, setup, payment_method=victims_card, client_secret=setup["client_secret"]
    )
    assert foreign.status_code == 400, foreign.text
    error = foreign.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "resource_missing",
        "payment_method",
    )
    # Another intent's secret opens nothing either.
    victims_setup = _setup_intent(victim)
    borrowed = _confirm(api, victims_setup, client_secret=setup["client_secret"], **_card_data())
    assert borrowed.status_code == 404

    # The victim's card is still the victim's: funding with it works.
    funded = victim.post("/wallet/fund", {"amount": 20, "payment_method_id": victims_card})
    assert funded.status_code == 200, funded.text
    assert victim.balance() == 20
    assert_error(
        attacker.post("/billing/payment-methods", {"payment_method_id": victims_card}), 404
    )


def test_a_setup_intent_confirms_with_the_customers_own_card(api: Api) -> None:
    agent = api.new_agent()
    own = agent.card()  # tokenized, not attached yet: Stripe accepts it with the secret
    setup = _setup_intent(agent)
    confirmed = _confirm(api, setup, payment_method=own, client_secret=setup["client_secret"])
    assert confirmed.status_code == 200, confirmed.text
    assert (confirmed.json()["status"], confirmed.json()["payment_method"]) == ("succeeded", own)
    # The reference skill confirms with card data and no client_secret: still works.
    setup = _setup_intent(agent)
    reference = _confirm(api, setup, **_card_data())
    assert reference.json()["status"] == "succeeded", reference.text
    assert "client_secret" in setup["instructions"]


def _forget_at_processor(services: Services, pm: str) -> None:
    """The processor no longer has the card (deleted on its side)."""
    with services.database.transaction() as session:
        session.execute(delete(SandboxObject).where(SandboxObject.id == pm))


def test_a_card_the_processor_no_longer_has_is_a_4xx(api: Api, services: Services) -> None:
    agent = api.new_agent()
    pm = _saved_card(api, agent)
    _forget_at_processor(services, pm)
    error = assert_error(
        agent.post("/wallet/fund", {"amount": 20, "payment_method_id": pm}, key="gone-1"),
        404,
        "payment_method_not_found",
    )
    assert error["details"]["payment_method_id"] == pm
    assert_error(agent.post("/wallet/fund", {"amount": 20}), 404, "payment_method_not_found")
    assert agent.balance() == 0
    # Nothing left for the janitor to look for.
    assert jobs_of(services, agent.account_id, attempts.JANITOR_JOB, status="queued") == 0
    # A coupon purchase with it gives the coupon back.
    code = bonus_coupon(api, max_redemptions=1)
    assert_error(_redeem(agent, code, pm), 404, "payment_method_not_found")
    assert _remaining(api, code) == 1
    # Removing it still works, though the processor has nothing to detach.
    assert agent.delete(f"/billing/payment-methods/{pm}").status_code == 200


def test_auto_funding_with_a_card_the_processor_lost_switches_off(
    api: Api, services: Services
) -> None:
    agent = api.new_agent()
    pm = _saved_card(api, agent)
    assert agent.post("/wallet/fund", {"amount": 10}).status_code == 200
    enabled = agent.put("/wallet/auto-funding", {"auto_charge_amount": 25, "charge_threshold": 5})
    assert enabled.status_code == 200, enabled.text
    _forget_at_processor(services, pm)
    assert api.charge_usage(agent.account_id, 8).status_code == 201
    Worker(services).drain()
    state = agent.get("/wallet/balance").json()["data"]["auto_funding"]
    assert state["enabled"] is False
    assert "no longer available" in state["disabled_reason"]
    assert agent.balance() == 2


# --- coupon reservations (defect 9) ----------------------------------------------------------


def _redeem(agent: Agent, code: str, pm: str, amount: object = 20) -> requests.Response:
    return agent.post(
        "/wallet/coupons/redeem",
        {"coupon_code": code, "purchase_amount": amount, "payment_method_id": pm},
    )


def _remaining(api: Api, code: str) -> int:
    listed = api.admin_get("/coupons").json()["data"]
    [coupon] = [c for c in listed if c["code"] == code]
    remaining: int = coupon["remaining_redemptions"]
    return remaining


def test_an_unknown_card_does_not_burn_the_coupon(api: Api) -> None:
    agent = api.new_agent()
    code = bonus_coupon(api, max_redemptions=1)
    assert_error(_redeem(agent, code, "pm_doesnotexist"), 404, "payment_method_not_found")
    assert _remaining(api, code) == 1
    redeemed = _redeem(agent, code, agent.card())
    assert redeemed.status_code == 200, redeemed.text
    assert agent.balance() == 25
    assert _remaining(api, code) == 0


@pytest.mark.parametrize("failure", ["declined", "unknown_card"])
def test_a_failed_redemption_leaves_the_last_one_to_others(api: Api, failure: str) -> None:
    first, second = api.new_agent(), api.new_agent()
    code = bonus_coupon(api, max_redemptions=1)
    pm = first.card(CARD_DECLINED) if failure == "declined" else "pm_nope"
    assert _redeem(first, code, pm).status_code == (402 if failure == "declined" else 404)
    redeemed = _redeem(second, code, second.card())
    assert redeemed.status_code == 200, redeemed.text
    assert_error(_redeem(first, code, first.card()), 409, "coupon_exhausted")


def test_the_janitor_releases_a_reservation_left_by_a_crash(api: Api, services: Services) -> None:
    agent, other = api.new_agent(), api.new_agent()
    code = bonus_coupon(api, max_redemptions=1)
    # The process reserved the last redemption and died before charging anything.
    with services.database.transaction() as session:
        coupon = coupons.find(session, code)
        reserved = coupons.reserve_purchase(
            session,
            coupon,
            account_id=agent.account_id,
            purchase_micros=20_000_000,
            idempotency_key="crashed",
        )
    info = other.get("/wallet/coupons/validate", params={"coupon_code": code}).json()["data"]
    assert info["error"]["code"] == "coupon_exhausted"
    Worker(services).drain(at=now() + coupons.RESERVATION_TIMEOUT - timedelta(seconds=5))
    assert _remaining(api, code) == 0  # not before its time: the request may still run
    Worker(services).drain(at=now() + coupons.RESERVATION_TIMEOUT + timedelta(seconds=5))
    assert _remaining(api, code) == 1
    with services.database.read() as session:
        assert session.get(CouponRedemption, reserved.redemption.id) is None
    redeemed = _redeem(other, code, other.card())
    assert redeemed.status_code == 200, redeemed.text


# Each example: a limited coupon and a few attempts by a pool of accounts, each attempt
# failing in its own way or succeeding.
ATTEMPTS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # which account (the same one again: twice)
        st.sampled_from(["good", "declined", "unknown_card", "below_minimum"]),
    ),
    min_size=1,
    max_size=6,
)
_pools: dict[str, list[Agent]] = {}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(limit=st.integers(min_value=1, max_value=3), attempts=ATTEMPTS)
def test_no_reservation_stays_stuck(
    live_server: LiveServer, api: Api, limit: int, attempts: list[tuple[int, str]]
) -> None:
    if live_server.url not in _pools:
        _pools[live_server.url] = [api.new_agent() for _ in range(3)]
    pool = _pools[live_server.url]
    code = bonus_coupon(api, max_redemptions=limit, min_purchase=15)
    redeemed: set[int] = set()
    for who, mode in attempts:
        agent = pool[who]
        pm = {
            "good": CARD_OK,
            "declined": CARD_DECLINED,
            "below_minimum": CARD_OK,
            "unknown_card": None,
        }[mode]
        response = _redeem(
            agent,
            code,
            agent.card(pm) if pm else f"pm_unknown{uuid.uuid4().hex[:8]}",
            amount=12 if mode == "below_minimum" else 20,
        )
        usable = who not in redeemed and len(redeemed) < limit
        if mode == "good" and usable:
            assert response.status_code == 200, response.text
            redeemed.add(who)
        elif usable:
            expected = {"declined": 402, "unknown_card": 404, "below_minimum": 422}[mode]
            assert response.status_code == expected, response.text
        else:
            assert response.status_code == 409, response.text
        with live_server.services.database.read() as session:
            coupon = coupons.find(session, code)
            remaining = coupons.coupon_view(coupon)["remaining_redemptions"]
            pending = session.scalar(
                select(func.count())
                .select_from(CouponRedemption)
                .where(
                    CouponRedemption.coupon_id == coupon.id, CouponRedemption.status == "pending"
                )
            )
        assert (remaining, pending) == (limit - len(redeemed), 0)


# --- per-client limits of the hosted page and tokenization -----------------------------------


def _tokenize(client: requests.Session, api: Api) -> requests.Response:
    return client.post(
        f"{api.base_url}/sandbox/v1/payment_methods",
        auth=("pk_test_billfold_sandbox", ""),
        data={
            "type": "card",
            "card[number]": CARD_OK,
            "card[exp_month]": 12,
            "card[exp_year]": 2030,
            "card[cvc]": "123",
        },
    )


def _payment_methods(services: Services) -> int:
    with services.database.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(SandboxObject)
                .where(SandboxObject.object == "payment_method")
            )
            or 0
        )


def test_tokenization_is_limited_per_client(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.model_fields["tokenize_max_per_client"].default == 60
    monkeypatch.setattr(services.settings, "tokenize_max_per_client", 5)
    monkeypatch.setattr(services.settings, "client_window_seconds", 3600)
    fresh_window(3600, 30)
    client = client_at(new_address())
    for _ in range(5):
        assert _tokenize(client, api).status_code == 200
    before = _payment_methods(services)
    refused = _tokenize(client, api)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit"
    assert int(refused.headers["Retry-After"]) > 0
    # Confirming a setup intent with card data tokenizes too.
    agent = api.new_agent()
    setup = _setup_intent(agent)
    confirm = client.post(
        f"{api.base_url}/sandbox/v1/setup_intents/{setup['setup_intent_id']}/confirm",
        auth=("pk_test_billfold_sandbox", ""),
        data={"client_secret": setup["client_secret"], **_card_data()},
    )
    assert confirm.status_code == 429
    assert _payment_methods(services) == before  # nothing stored for refused requests
    assert _tokenize(client_at(new_address()), api).status_code == 200


def _payment_link(agent: Agent) -> dict[str, Any]:
    response = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 20})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def _pay(client: requests.Session, url: str, number: str = CARD_DECLINED) -> requests.Response:
    return client.post(
        url,
        data={"card_number": number, "card_expiry": "12/34", "card_cvc": "123"},
        allow_redirects=False,
    )


def test_pay_attempts_are_limited_per_payment_link(api: Api, services: Services) -> None:
    settings_ = services.settings
    assert (settings_.pay_max_attempts_per_session, settings_.pay_session_window_seconds) == (
        10,
        600,
    )
    fresh_window(600, 20)
    agent = api.new_agent()
    link = _payment_link(agent)
    client = client_at(new_address())
    for _ in range(10):
        assert _pay(client, link["payment_url"]).status_code == 402
    before = _payment_methods(services)
    refused = _pay(client_at(new_address()), link["payment_url"], CARD_OK)  # any address
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("text/html")
    assert "Too many payment attempts" in refused.text
    assert "Nothing was charged" in refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert _payment_methods(services) == before
    assert agent.balance() == 0
    # Another link is unaffected.
    assert _pay(client, _payment_link(agent)["payment_url"], CARD_OK).status_code == 303
    assert agent.balance() == 20


def test_pay_attempts_are_limited_per_client(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.model_fields["pay_max_attempts_per_client"].default == 60
    monkeypatch.setattr(services.settings, "pay_max_attempts_per_client", 3)
    monkeypatch.setattr(services.settings, "client_window_seconds", 3600)
    fresh_window(3600, 30)
    client = client_at(new_address())
    for _ in range(3):
        assert _pay(client, f"{api.base_url}/pay/cs_nosuchlink").status_code == 404
    agent = api.new_agent()
    link = _payment_link(agent)
    refused = _pay(client, link["payment_url"], CARD_OK)
    assert refused.status_code == 429
    assert "Too many payment attempts" in refused.text
    assert agent.balance() == 0
    assert _pay(client_at(new_address()), link["payment_url"], CARD_OK).status_code == 303
    assert agent.balance() == 20


# --- the admin key at start-up ---------------------------------------------------------------


def test_the_admin_key_is_printed_in_full_only_when_generated(tmp_path: Path) -> None:
    generated = resolve_admin_key(Settings(admin_key=None, var_dir=tmp_path))
    assert generated.generated
    assert generated.key in generated.display()
    again = resolve_admin_key(Settings(admin_key=None, var_dir=tmp_path))
    assert again.key == generated.key
    assert not again.generated
    assert generated.key not in again.display()
    assert admin_key_fingerprint(generated.key) in again.display()
    from_env = resolve_admin_key(Settings(admin_key="bf_admin_from_the_environment_123456"))
    assert "bf_admin_from_the_environment_123456" not in from_env.display()
    assert "BILLFOLD_ADMIN_KEY" in from_env.display()
    fingerprint = admin_key_fingerprint("bf_admin_from_the_environment_123456")
    assert fingerprint.startswith("bf_adm") and len(fingerprint) < 30
