"""Login, token lifetimes, revocation, suspension and login throttling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import update

from billfold.accounts import service as accounts
from billfold.accounts.models import AgentToken
from billfold.errors import RateLimited
from billfold.security import hash_secret
from billfold.services import Services
from tests.helpers import Agent, Api, assert_error, fresh_window


def _login(api: Api, email: str, password: str, **extra: object) -> requests.Response:
    return requests.post(
        api.agent_url("/auth/login"), json={"email": email, "password": password, **extra}
    )


@pytest.mark.parametrize(
    ("expires_in", "days"), [("1_week", 7), ("1_month", 30), ("3_months", 90), ("never", None)]
)
def test_login_token_lifetimes(api: Api, expires_in: str, days: int | None) -> None:
    agent = api.new_agent()
    response = _login(api, agent.email, agent.password, expires_in=expires_in)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["token_type"] == "bearer"
    assert data["account_id"] == agent.account_id
    if days is None:
        assert data["expires_at"] is None
    else:
        expires_at = datetime.fromisoformat(data["expires_at"])
        expected = datetime.now(UTC) + timedelta(days=days)
        assert abs((expires_at - expected).total_seconds()) < 60
    token_agent = Agent(api, agent.account_id, agent.email, agent.password, data["access_token"])
    assert token_agent.get("/wallet/balance").status_code == 200


def test_default_lifetime_is_one_month(api: Api) -> None:
    agent = api.new_agent()
    data = _login(api, agent.email.upper(), agent.password).json()["data"]  # emails fold case
    expires_at = datetime.fromisoformat(data["expires_at"])
    assert timedelta(days=29) < expires_at - datetime.now(UTC) <= timedelta(days=30)


def test_wrong_credentials_are_401(api: Api) -> None:
    agent = api.new_agent()
    assert_error(_login(api, agent.email, "wrong password"), 401, "invalid_credentials")
    assert_error(_login(api, "nobody@example.com", "whatever"), 401, "invalid_credentials")
    assert_error(_login(api, agent.email, agent.password, expires_in="forever"), 422)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer garbage", "Basic abc", "bf_at_no_scheme"],
)
def test_missing_or_garbage_tokens_are_401(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = requests.get(api.agent_url("/wallet/balance"), headers=headers)
    assert_error(response, 401)


def test_expired_token_is_401(api: Api, services: Services) -> None:
    agent = api.new_agent()
    with services.database.transaction() as session:
        session.execute(
            update(AgentToken)
            .where(AgentToken.token_hash == hash_secret(agent.token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert_error(agent.get("/wallet/balance"), 401, "token_expired")


def test_revoked_token_is_401_and_others_keep_working(api: Api) -> None:
    agent = api.new_agent()
    second = _login(api, agent.email, agent.password).json()["data"]["access_token"]
    response = agent.delete("/auth/tokens/current")
    assert response.status_code == 200
    assert_error(agent.get("/wallet/balance"), 401, "token_revoked")
    other = Agent(api, agent.account_id, agent.email, agent.password, second)
    assert other.get("/wallet/balance").status_code == 200


def test_suspended_account_cannot_use_or_get_tokens(api: Api) -> None:
    agent = api.new_agent()
    assert api.admin_post(f"/accounts/{agent.account_id}/suspend").status_code == 200
    assert_error(agent.get("/wallet/balance"), 401, "account_suspended")
    assert_error(_login(api, agent.email, agent.password), 401, "account_suspended")
    assert api.admin_post(f"/accounts/{agent.account_id}/reactivate").status_code == 200
    assert agent.get("/wallet/balance").status_code == 200


def test_operator_api_needs_the_admin_key(api: Api) -> None:
    agent = api.new_agent()
    for headers in ({}, agent.headers, {"Authorization": "Bearer bf_admin_wrong"}):
        response = requests.post(
            api.admin_url("/accounts"),
            json={"email": "x@example.com", "password": "long enough"},
            headers=headers,
        )
        assert_error(response, 401)


def test_operator_issues_tokens(api: Api) -> None:
    agent = api.new_agent()
    response = api.admin_post(f"/accounts/{agent.account_id}/tokens", {"expires_in": "never"})
    assert response.status_code == 201
    token = response.json()["data"]["access_token"]
    assert Agent(api, agent.account_id, "", "", token).get("/wallet/balance").status_code == 200
    assert_error(api.admin_post("/accounts/acct_missing/tokens"), 404)


def test_duplicate_account_email_is_409(api: Api) -> None:
    agent = api.new_agent()
    response = api.admin_post("/accounts", {"email": agent.email, "password": "another one"})
    assert_error(response, 409, "account_exists")


def test_failed_logins_are_throttled_per_email(api: Api, services: Services) -> None:
    """Per email from one client (other clients: tests/test_hardening_auth.py)."""
    agent = api.new_agent()
    limit = services.settings.login_max_failures_per_email_client
    fresh_window(services.settings.login_window_seconds, 30)  # windows are fixed, real time
    for _ in range(limit):
        assert_error(_login(api, agent.email, "wrong password"), 401)
    throttled = _login(api, agent.email, agent.password)  # even the right password waits
    assert_error(throttled, 429, "rate_limited")
    assert int(throttled.headers["Retry-After"]) > 0
    other = api.new_agent()
    assert _login(api, other.email, other.password).status_code == 200


def test_failed_logins_are_throttled_per_client_address(services: Services) -> None:
    """The per-address limit over all emails, driven at the service level with an address
    no test uses and a limit of 3."""
    settings = services.settings.model_copy(update={"login_max_failures_per_client": 3})
    for n in range(3):
        with services.database.transaction() as session:
            accounts.reserve_login_attempt(
                session, email=f"someone{n}@example.com", client="198.51.100.7", settings=settings
            )
    with pytest.raises(RateLimited), services.database.transaction() as session:
        accounts.reserve_login_attempt(
            session, email="someone-else@example.com", client="198.51.100.7", settings=settings
        )
