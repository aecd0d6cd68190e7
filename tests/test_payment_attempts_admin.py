"""The operator's listing of payment attempts: `GET /api/admin/v1/payment-attempts`.

A charge whose outcome the processor could not tell (the call timed out) is `unknown`
and listed as such until the janitor settles it; a normal funding is `succeeded`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from billfold.application.jobs import Worker
from billfold.clock import now
from billfold.payments import attempts
from billfold.services import Services
from billfold.wallet import funding as wallet_funding
from tests.helpers import Agent, Api, assert_error, decimal_json

AFTER_STALE = attempts.STALE_AFTER + timedelta(seconds=5)


class ProcessorTimeout(Exception):
    """The processor did not answer in time (it may or may not have charged)."""


class TimingOutProcessor:
    """The real sandbox processor, whose charge call times out: after the charge reached
    the processor, or before it did."""

    def __init__(self, inner: Any, *, reaches_processor: bool) -> None:
        self.inner = inner
        self.reaches_processor = reaches_processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def charge(self, **kwargs: Any) -> Any:
        if self.reaches_processor:
            self.inner.charge(**kwargs)
        raise ProcessorTimeout


def _timed_out_funding(
    services: Services, agent: Agent, amount_micros: int, *, reaches_processor: bool = True
) -> str:
    """A wallet funding whose processor call times out; the card it used."""
    pm = agent.card()
    processor = TimingOutProcessor(services.processor, reaches_processor=reaches_processor)
    with pytest.raises(ProcessorTimeout):
        wallet_funding.fund_wallet(
            services.database,
            processor,
            account_id=agent.account_id,
            amount_micros=amount_micros,
            payment_method_id=pm,
            idempotency_key=f"fund-{uuid.uuid4().hex}",
        )
    return pm


def _list(api: Api, **params: Any) -> requests.Response:
    return api.admin_get("/payment-attempts", params=params)


def _items(api: Api, **params: Any) -> list[dict[str, Any]]:
    response = _list(api, **params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = decimal_json(response)["data"]["items"]
    return items


def test_an_unknown_charge_is_listed_until_the_janitor_settles_it(
    api: Api, services: Services
) -> None:
    agent = api.new_agent()
    pm = _timed_out_funding(services, agent, 40_000_000)
    assert agent.balance() == 0  # nothing is credited while the outcome is unknown

    [item] = _items(api, state="unknown", account_id=agent.account_id)
    assert item["id"].startswith("pat_")
    assert {k: v for k, v in item.items() if k not in {"id", "created_at", "updated_at"}} == {
        "account_id": agent.account_id,
        "purpose": "wallet_funding",
        "state": "unknown",
        "amount": Decimal(40),
        "currency": "USD",
        "payment_method_id": pm,
        "payment_id": None,
        "failure_reason": None,
        "failure_message": None,
        "settled_by": None,
        "settled_at": None,
    }
    assert datetime.fromisoformat(item["updated_at"]) >= datetime.fromisoformat(item["created_at"])
    assert item["id"] in {i["id"] for i in _items(api, state="unknown", limit=200)}
    assert _items(api, state="succeeded", account_id=agent.account_id) == []
    assert _items(api, state="pending", account_id=agent.account_id) == []

    # The janitor finds the charge at the processor and records it once.
    Worker(services).drain(at=now() + AFTER_STALE)
    assert agent.balance() == 40
    assert _items(api, state="unknown", account_id=agent.account_id) == []
    [settled] = _items(api, state="succeeded", account_id=agent.account_id)
    assert settled["id"] == item["id"]
    assert settled["payment_id"].startswith("pi_")
    assert settled["settled_by"] == "janitor"
    assert settled["settled_at"] is not None


def test_a_normal_funding_is_listed_as_succeeded(api: Api) -> None:
    agent = api.new_agent()
    funded = agent.fund(25, key=f"fund-{uuid.uuid4().hex}")
    assert funded.status_code == 200, funded.text
    payment_id = funded.json()["data"]["payment_intent_id"]

    [item] = _items(api, account_id=agent.account_id)
    assert (item["state"], item["purpose"], item["amount"]) == (
        "succeeded",
        "wallet_funding",
        Decimal(25),
    )
    assert (item["payment_id"], item["settled_by"]) == (payment_id, "request")
    assert item["failure_reason"] is None and item["settled_at"] is not None
    assert _items(api, state="succeeded", account_id=agent.account_id) == [item]
    assert _items(api, state="unknown", account_id=agent.account_id) == []


def test_filters_by_account_newest_first_with_a_limit(api: Api, services: Services) -> None:
    agent, other = api.new_agent(), api.new_agent()
    _timed_out_funding(services, agent, 10_000_000, reaches_processor=False)
    _timed_out_funding(services, agent, 20_000_000, reaches_processor=False)
    _timed_out_funding(services, other, 30_000_000, reaches_processor=False)

    mine = _items(api, account_id=agent.account_id)
    assert [i["amount"] for i in mine] == [20, 10]  # newest first
    assert {i["account_id"] for i in mine} == {agent.account_id}
    assert [i["amount"] for i in _items(api, account_id=other.account_id)] == [30]
    assert _items(api, account_id="acct_nobody") == []

    page = decimal_json(_list(api, account_id=agent.account_id, limit=1))["data"]
    assert (len(page["items"]), page["limit"], page["has_more"]) == (1, 1, True)
    assert page["items"][0]["id"] == mine[0]["id"]
    page = decimal_json(_list(api, account_id=agent.account_id, limit=2))["data"]
    assert (len(page["items"]), page["has_more"]) == (2, False)
    assert decimal_json(_list(api, limit=200))["data"]["limit"] == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "lost"}, "state"),
        ({"state": "UNKNOWN"}, "state"),
        ({"state": ""}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1e400"}, "limit"),
        ({"account_id": ""}, "account_id"),
        ({"account_id": "a" * 41}, "account_id"),
    ],
)
def test_bad_query_values_are_422_in_the_envelope(
    api: Api, params: dict[str, Any], field: str
) -> None:
    error = assert_error(_list(api, **params), 422, "invalid_request")
    assert error["details"]["field"] == field


def test_the_listing_needs_the_admin_key(api: Api) -> None:
    url = api.admin_url("/payment-attempts")
    assert_error(api.session.get(url, params={"state": "unknown"}), 401, "unauthenticated")
    wrong = {"Authorization": "Bearer bf_admin_wrong"}
    assert_error(api.session.get(url, headers=wrong), 401, "unauthenticated")
    agent = api.new_agent()  # an agent token is not the admin key
    assert_error(api.session.get(url, headers=agent.headers), 401, "unauthenticated")
