"""Bad input gets a clear 4xx in the envelope and changes nothing."""

from __future__ import annotations

import pytest
import requests

from tests.helpers import Agent, Api, assert_error

BAD_CARD_AMOUNTS = [
    "-25",
    "0",
    "9.99",
    "NaN",
    "Infinity",
    "-Infinity",
    '"abc"',
    '""',
    "10.001",
    "1e7",
    "1000000.01",
    "null",
    "true",
    "[]",
    "{}",
    "1e400",
]

BAD_USAGE_AMOUNTS = ["0", "-1", "0.0000001", "0.0000015", "NaN", "1000001", '"1,5"', "null"]


@pytest.fixture
def funded(api: Api) -> Agent:
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    return agent


def _raw(agent: Agent, path: str, body: str, **headers: str) -> requests.Response:
    return requests.post(
        agent.api.agent_url(path),
        data=body,
        headers={**agent.headers, "Content-Type": "application/json", **headers},
    )


def _unchanged(agent: Agent) -> None:
    assert agent.balance() == 20
    assert agent.transaction_count() == 1


@pytest.mark.parametrize("amount", BAD_CARD_AMOUNTS)
def test_bad_funding_amounts(funded: Agent, amount: str) -> None:
    pm = funded.get("/billing/payment-methods").json()["data"]["items"][0]["id"]
    response = _raw(funded, "/wallet/fund", f'{{"amount": {amount}, "payment_method_id": "{pm}"}}')
    error = assert_error(response, 422, "invalid_request")
    assert error["details"]["field"] in {"amount", "body"}
    _unchanged(funded)


@pytest.mark.parametrize("amount", [a for a in BAD_CARD_AMOUNTS if a != "9.99"])
def test_bad_withdrawal_amounts(funded: Agent, amount: str) -> None:
    assert_error(_raw(funded, "/wallet/withdraw", f'{{"amount": {amount}}}'), 422)
    _unchanged(funded)


@pytest.mark.parametrize("amount", BAD_USAGE_AMOUNTS)
def test_bad_usage_amounts(api: Api, funded: Agent, amount: str) -> None:
    response = requests.post(
        api.admin_url("/usage-charges"),
        data=f'{{"account_id": "{funded.account_id}", "amount": {amount}, "usecase": "x"}}',
        headers={**api.admin_headers, "Content-Type": "application/json"},
    )
    assert_error(response, 422, "invalid_request")
    _unchanged(funded)


@pytest.mark.parametrize(
    "body",
    [
        "{bad json",
        "",
        "[]",
        '{"amount": 10, "currency": "EUR"}',  # unknown field: refused, not ignored
        '{"amount": 10, "payment_method_id": "pm_" }',
        '{"amount": 10, "payment_method_id": "pm with spaces"}',
        '{"amount": 10, "payment_method_id": 42}',
        '{"amount": 10} trailing',
    ],
)
def test_malformed_bodies(funded: Agent, body: str) -> None:
    response = _raw(funded, "/wallet/fund", body)
    assert 400 <= response.status_code < 500
    error = assert_error(response, response.status_code)
    assert error["code"] in {"invalid_request", "payment_method_not_found"}
    _unchanged(funded)


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9".encode().decode("latin-1")])
def test_bad_idempotency_keys(funded: Agent, key: str) -> None:
    response = _raw(funded, "/wallet/withdraw", '{"amount": 1}', **{"Idempotency-Key": key})
    assert_error(response, 422, "invalid_request")
    _unchanged(funded)


def test_unknown_endpoint_and_method_use_the_envelope(funded: Agent) -> None:
    assert_error(funded.get("/wallet/nope"), 404, "not_found")
    assert_error(funded.delete("/wallet/balance"), 405, "method_not_allowed")


def test_oversized_body_is_refused(funded: Agent) -> None:
    body = '{"amount": 10, "payment_method_id": "' + "p" * 2_000_000 + '"}'
    assert_error(_raw(funded, "/wallet/fund", body), 413, "payload_too_large")
    _unchanged(funded)


def test_nul_characters_are_refused_everywhere(api: Api, funded: Agent) -> None:
    """PostgreSQL text cannot hold NUL: it must be a 422, never a 500, on both databases."""
    assert_error(funded.get("/payments/%00/status"), 422, "invalid_request")
    assert_error(funded.get("/wallet/coupons/validate", params={"coupon_code": "\x00"}), 422)
    assert_error(api.admin_get("/accounts/%00"), 422)
    body = '{"account_id": "\\u0000", "amount": 1, "usecase": "x"}'
    response = requests.post(
        api.admin_url("/usage-charges"),
        data=body,
        headers={**api.admin_headers, "Content-Type": "application/json"},
    )
    assert_error(response, 422, "invalid_request")
    assert_error(funded.put("/billing/info", {"name": "a\x00"}), 422, "invalid_request")
    _unchanged(funded)


def test_decimal_metadata_is_kept_exactly(api: Api, funded: Agent) -> None:
    response = requests.post(
        api.admin_url("/usage-charges"),
        data=(
            f'{{"account_id": "{funded.account_id}", "amount": 0.5, "usecase": "x",'
            ' "metadata": {"tokens": 1.25, "nested": [0.1, {"p": 3.000001}]}}'
        ),
        headers={**api.admin_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    txn = funded.get("/wallet/transactions", params={"type": "debit"}).json()["data"]["items"][0]
    assert '"tokens": 1.25' in funded.get("/wallet/transactions").text
    assert txn["metadata"] == {"tokens": 1.25, "nested": [0.1, {"p": 3.000001}]}


def test_body_that_is_not_utf8_is_invalid_json(funded: Agent) -> None:
    response = requests.post(
        funded.api.agent_url("/wallet/fund"),
        data=b'{"amount": "\xff"}',
        headers={**funded.headers, "Content-Type": "application/json"},
    )
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("plan_id", ["740703001332989165568", "2147483648", "0", "-1"])
def test_payment_link_plan_id_out_of_range_is_refused(funded: Agent, plan_id: str) -> None:
    """Found by fuzzing: a plan id past the database's integer answered 500."""
    response = _raw(
        funded, "/billing/payment-link", f'{{"purpose": "subscribe", "plan_id": {plan_id}}}'
    )
    error = assert_error(response, 422, "invalid_request")
    assert error["details"]["field"] in {"plan_id", "body"}
    _unchanged(funded)
