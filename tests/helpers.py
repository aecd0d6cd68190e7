"""A thin client for tests: the HTTP API as agents and the operator call it."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from billfold.clock import wall_now
from billfold.jobs.models import Job
from billfold.payments.models import OPEN_STATES, PaymentAttempt
from billfold.services import Services

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"
CARD_EXPIRED = "4000000000000069"
CARD_INCORRECT_CVC = "4000000000000127"
CARD_PROCESSING_ERROR = "4000000000000119"
CARD_ATTACH_THEN_FAIL = "4000000000000341"
CARD_REQUIRES_AUTH = "4000002500003155"
TEST_CARDS = (
    CARD_OK,
    CARD_DECLINED,
    CARD_INSUFFICIENT_FUNDS,
    CARD_EXPIRED,
    CARD_INCORRECT_CVC,
    CARD_PROCESSING_ERROR,
    CARD_ATTACH_THEN_FAIL,
    CARD_REQUIRES_AUTH,
)


def decimal_json(response: requests.Response) -> Any:
    """Parse a response keeping numbers exact."""
    import json

    return json.loads(response.text, parse_float=Decimal)


@dataclass
class Agent:
    api: Api
    account_id: str
    email: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.api.session.get(self.api.agent_url(path), headers=self.headers, **kwargs)

    def post(
        self, path: str, json: Any = None, *, key: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if key:
            headers["Idempotency-Key"] = key
        return self.api.session.post(self.api.agent_url(path), json=json, headers=headers, **kwargs)

    def put(
        self, path: str, json: Any = None, *, key: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if key:
            headers["Idempotency-Key"] = key
        return self.api.session.put(self.api.agent_url(path), json=json, headers=headers, **kwargs)

    def delete(self, path: str, *, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if key:
            headers["Idempotency-Key"] = key
        return self.api.session.delete(self.api.agent_url(path), headers=headers, **kwargs)

    def card(self, number: str = CARD_OK) -> str:
        return self.api.tokenize(number)

    def fund(self, amount: Any, number: str = CARD_OK, **kwargs: Any) -> requests.Response:
        return self.post(
            "/wallet/fund", {"amount": amount, "payment_method_id": self.card(number)}, **kwargs
        )

    def balance(self) -> Decimal:
        response = self.get("/wallet/balance")
        assert response.status_code == 200, response.text
        value: Decimal = decimal_json(response)["data"]["balance"]
        return value

    def transaction_count(self) -> int:
        response = self.get("/wallet/transactions", params={"limit": 1})
        assert response.status_code == 200, response.text
        return int(response.json()["data"]["total"])


@dataclass
class TestClock:
    """A sandbox test clock of the operator's API: its accounts live on its time."""

    __test__ = False  # not a pytest class

    api: Api
    id: str

    def state(self) -> dict[str, Any]:
        response = self.api.admin_get(f"/test-clocks/{self.id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def now(self) -> datetime:
        return datetime.fromisoformat(self.state()["now"])

    def advance(self, *, key: str | None = None, **amount: int) -> dict[str, Any]:
        """Move the clock forward by days/hours/seconds, running its due jobs on the way."""
        response = self.api.admin_post(f"/test-clocks/{self.id}/advance", amount, key=key)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def advance_to(self, moment: datetime) -> dict[str, Any]:
        """Move the clock to `moment` (it must be ahead), running what falls due on the way."""
        current = self.now()
        seconds = math.ceil((moment - current).total_seconds())
        assert seconds > 0, f"{moment} is not ahead of the clock ({current})"
        return self.advance(seconds=seconds)


# The secret key the test stripe servers use (tests/conftest.py), for the fake's own
# test endpoints (tests/stripe_fake.py).
STRIPE_FAKE_SECRET_KEY = "sk_test_billfold"
SANDBOX_PUBLISHABLE_KEY = "pk_test_billfold_sandbox"


class Api:
    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        processor: str = "sandbox",
        tokenize_base: str | None = None,
        publishable_key: str = SANDBOX_PUBLISHABLE_KEY,
    ) -> None:
        self.base_url = base_url
        self.admin_key = admin_key
        self.session = requests.Session()
        self.processor = processor
        # Where cards are tokenized: the sandbox's Stripe-compatible API, or (stripe) the
        # server's tests/stripe_fake.py, as /billing/stripe-config tells clients.
        self.tokenize_base = (tokenize_base or f"{base_url}/sandbox").rstrip("/")
        self.publishable_key = publishable_key

    @property
    def on_stripe(self) -> bool:
        return self.processor == "stripe"

    def agent_url(self, path: str) -> str:
        return f"{self.base_url}/api/agents/v1{path}"

    def admin_url(self, path: str) -> str:
        return f"{self.base_url}/api/admin/v1{path}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def admin_post(
        self, path: str, json: Any = None, *, key: str | None = None
    ) -> requests.Response:
        headers = dict(self.admin_headers)
        if key:
            headers["Idempotency-Key"] = key
        return self.session.post(self.admin_url(path), json=json, headers=headers)

    def admin_get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.admin_url(path), headers=self.admin_headers, **kwargs)

    def new_clock(self, frozen_time: datetime | None = None) -> TestClock:
        """A test clock of the caller's own (at `frozen_time`, or now)."""
        body: dict[str, Any] = {"name": f"clock {uuid.uuid4().hex[:8]}"}
        if frozen_time is not None:
            body["frozen_time"] = frozen_time.isoformat()
        created = self.admin_post("/test-clocks", body)
        assert created.status_code == 201, created.text
        return TestClock(self, created.json()["data"]["id"])

    def new_agent(self, *, expires_in: str = "1_month", clock: TestClock | None = None) -> Agent:
        """A new account (on `clock`, or on real time) and an agent token for it."""
        email = f"agent-{uuid.uuid4().hex[:12]}@example.com"
        password = "correct horse battery staple"
        body = {"email": email, "password": password}
        if clock is not None:
            body["test_clock_id"] = clock.id
        created = self.admin_post("/accounts", body)
        assert created.status_code == 201, created.text
        login = self.session.post(
            self.agent_url("/auth/login"),
            json={"email": email, "password": password, "expires_in": expires_in},
        )
        assert login.status_code == 200, login.text
        return Agent(
            self,
            created.json()["data"]["id"],
            email,
            password,
            login.json()["data"]["access_token"],
        )

    def stripe_config(self, agent: Agent) -> dict[str, Any]:
        response = agent.get("/billing/stripe-config")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def tokenize(self, number: str, *, exp_year: int | None = None, cvc: str = "123") -> str:
        """A card PaymentMethod, tokenized where the server's processor says (the sandbox's
        API, or Stripe's: the fake), with the publishable key as a client would."""
        response = self.session.post(
            f"{self.tokenize_base}/v1/payment_methods",
            auth=(self.publishable_key, ""),
            data={
                "type": "card",
                "card[number]": number,
                "card[exp_month]": 12,
                "card[exp_year]": exp_year or date.today().year + 2,
                "card[cvc]": cvc,
            },
        )
        assert response.status_code == 200, response.text
        pm_id: str = response.json()["id"]
        return pm_id

    def pay_link(self, link: dict[str, Any], number: str = CARD_OK) -> requests.Response:
        """The human paying a payment link with card `number`. On the sandbox: Billfold's
        hosted form. On stripe: the link redirects (303) to the Stripe Checkout page of its
        session, where the fake's test endpoint pays it."""
        if not self.on_stripe:
            return self.session.post(
                link["payment_url"],
                data={"card_number": number, "card_expiry": "12/34", "card_cvc": "123"},
                allow_redirects=False,
            )
        redirect = self.session.get(link["payment_url"], allow_redirects=False)
        assert redirect.status_code == 303, (redirect.status_code, redirect.text)
        location = redirect.headers["Location"]
        prefix = f"{self.tokenize_base}/checkout/"
        assert location.startswith(prefix + "cs_test_"), location
        checkout_id = location[len(prefix) :]
        return self.session.post(
            f"{self.tokenize_base}/_test/checkout/{checkout_id}/pay",
            data={
                "card[number]": number,
                "card[exp_month]": 12,
                "card[exp_year]": date.today().year + 2,
                "card[cvc]": "123",
            },
            headers={"Authorization": f"Bearer {STRIPE_FAKE_SECRET_KEY}"},
        )

    def charge_usage(
        self, account_id: str, amount: Any, *, key: str | None = None, usecase: str = "tokens"
    ) -> requests.Response:
        return self.admin_post(
            "/usage-charges",
            {"account_id": account_id, "amount": amount, "usecase": usecase},
            key=key,
        )

    def ledger_check(self, account_id: str) -> dict[str, Any]:
        response = self.admin_get(f"/accounts/{account_id}/ledger-check")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = decimal_json(response)["data"]
        return data


def assert_error(
    response: requests.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """The response is a rejection in the spec's envelope."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} or status == 402, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}, error
    assert error["request_id"].startswith("req_")
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def jobs_of(services: Services, account_id: str, kind: str, *, status: str | None = None) -> int:
    """How many jobs of `kind` (in `status`, if given) the account has."""
    query = (
        select(func.count()).select_from(Job).where(Job.account_id == account_id, Job.kind == kind)
    )
    if status is not None:
        query = query.where(Job.status == status)
    with services.database.read() as session:
        return int(session.scalar(query) or 0)


@contextmanager
def while_charging(
    monkeypatch: pytest.MonkeyPatch, services: Services, meanwhile: Callable[[], object]
) -> Iterator[list[str]]:
    """Run `meanwhile` once, while the block's first card charge is on its way to the
    processor (called, not yet answered); yields the idempotency keys of the block's
    charges, in order."""
    processor = services.processor
    real_charge, real_charge_many = processor.charge, processor.charge_many
    charged: list[str] = []

    def charge(**call: Any) -> Any:
        charged.append(call["idempotency_key"])
        if len(charged) == 1:
            meanwhile()
        return real_charge(**call)

    def charge_many(requests: Any) -> Any:
        first = not charged
        charged.extend(request.idempotency_key for request in requests)
        if first and charged:
            meanwhile()
        return real_charge_many(requests)

    monkeypatch.setattr(processor, "charge", charge)
    monkeypatch.setattr(processor, "charge_many", charge_many)
    try:
        yield charged
    finally:
        monkeypatch.setattr(processor, "charge", real_charge)
        monkeypatch.setattr(processor, "charge_many", real_charge_many)


def age_open_attempts(services: Services, account_id: str, by: timedelta) -> None:
    """Move the account's open payment attempts `by` into the past (when they were written
    and when their charge began), as if that much real time had passed since: the payment
    janitor settles an attempt as never charged only once its charge began STALE_AFTER
    before it asked the processor."""
    with services.database.transaction() as session:
        for row in session.scalars(
            select(PaymentAttempt).where(
                PaymentAttempt.account_id == account_id, PaymentAttempt.state.in_(OPEN_STATES)
            )
        ):
            row.created_at -= by
            row.updated_at -= by
            if row.charge_started_at is not None:
                row.charge_started_at -= by


def fresh_window(window_seconds: int, need_seconds: int) -> None:
    """Wait, if need be, so the next `need_seconds` fall in one fixed counting window."""
    left = window_seconds - int(wall_now().timestamp()) % window_seconds
    if left < need_seconds:
        time.sleep(left + 0.5)


def bonus_coupon(api: Api, *, max_redemptions: int, min_purchase: int = 10) -> str:
    """A new coupon giving a $5 bonus on a card purchase of at least `min_purchase`."""
    code = f"B{uuid.uuid4().hex[:10].upper()}"
    created = api.admin_post(
        "/coupons",
        {
            "code": code,
            "kind": "bonus_fixed",
            "amount": 5,
            "min_purchase": min_purchase,
            "max_redemptions": max_redemptions,
        },
    )
    assert created.status_code == 201, created.text
    return code
