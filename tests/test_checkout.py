"""Payment links over HTTP: validation, the hosted form, confirm semantics, expiry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import requests
from sqlalchemy import func, select, update

from billfold.application.jobs import Worker
from billfold.checkout.models import CheckoutSession
from billfold.clock import now
from billfold.payments.models import Payment
from billfold.services import Services
from tests.helpers import CARD_INSUFFICIENT_FUNDS, CARD_OK, Agent, Api, assert_error


def _link(agent: Agent, amount: object = 50) -> dict:
    response = agent.post("/billing/payment-link", {"purpose": "fund", "amount": amount})
    assert response.status_code == 201, response.text
    return response.json()["data"]


def _pay(link: dict, number: str = CARD_OK, expiry: str = "12/34") -> requests.Response:
    return requests.post(
        link["payment_url"],
        data={"card_number": number, "card_expiry": expiry, "card_cvc": "123"},
        allow_redirects=False,
    )


def test_payment_link_shape_and_validation(api: Api) -> None:
    agent = api.new_agent()
    link = _link(agent, 50)
    assert link["purpose"] == "fund"
    assert link["amount"] == 50
    assert link["session_id"].startswith("cs_")
    assert link["payment_url"] == f"{api.base_url}/pay/{link['session_id']}"
    assert link["session_id"] in link["instructions"]
    assert link["expires_at"]

    rejected = agent.post(
        "/billing/payment-link",
        {"purpose": "fund", "amount": 50, "success_url": "https://example.com/done"},
    )
    error = assert_error(rejected, 422, "invalid_request")
    assert "success_url is not accepted" in error["message"]
    assert error["details"]["field"] == "success_url"
    for body in (
        {"purpose": "fund", "amount": "9.99"},
        {"purpose": "fund"},
        {"purpose": "fund", "amount": "10.001"},
        {"purpose": "donate", "amount": 10},
        {"purpose": "subscribe"},
    ):
        assert_error(agent.post("/billing/payment-link", body), 422)
    unknown = {"purpose": "subscribe", "plan_id": 2_000_000_000}
    assert_error(agent.post("/billing/payment-link", unknown), 404, "plan_not_found")


def test_confirm_before_payment_is_409_error_only(api: Api) -> None:
    agent = api.new_agent()
    link = _link(agent)
    response = agent.post("/wallet/confirm-checkout", {"session_id": link["session_id"]})
    assert_error(response, 409, "checkout_not_completed")
    assert "data" not in response.json()  # the reference poll loop keeps polling on KeyError
    other = api.new_agent()
    assert_error(other.post("/wallet/confirm-checkout", {"session_id": link["session_id"]}), 404)
    assert_error(agent.post("/wallet/confirm-checkout", {"session_id": "cs_nope"}), 404)


def test_pay_then_confirm_credits_once(api: Api, services: Services) -> None:
    agent = api.new_agent()
    link = _link(agent, "12.34")
    page = requests.get(link["payment_url"])
    assert page.status_code == 200
    assert "$12.34" in page.text
    assert 'autocomplete="cc-number"' in page.text

    declined = _pay(link, CARD_INSUFFICIENT_FUNDS)
    assert declined.status_code == 402
    assert "insufficient funds" in declined.text
    assert 'role="alert"' in declined.text
    invalid = _pay(link, "4242424242424241")
    assert invalid.status_code == 402
    assert "card number is incorrect" in invalid.text
    assert agent.balance() == 0

    paid = _pay(link)
    assert paid.status_code == 303
    success = requests.get(link["payment_url"])
    assert link["session_id"] in success.text
    assert "Copy" in success.text

    body = {"session_id": link["session_id"]}
    with ThreadPoolExecutor(max_workers=10) as pool:
        confirms = list(pool.map(lambda _: agent.post("/wallet/confirm-checkout", body), range(10)))
    payloads = [c.json() for c in confirms]
    assert all(c.status_code == 200 for c in confirms)
    assert all(p == payloads[0] for p in payloads)
    data = payloads[0]["data"]
    assert (data["status"], data["amount"], data["balance"]) == ("complete", 12.34, 12.34)
    api.charge_usage(agent.account_id, 1)
    assert agent.post("/wallet/confirm-checkout", body).json() == payloads[0]  # stable
    assert agent.balance() == Decimal("11.34")
    # Paying an already paid link charges nothing more.
    assert _pay(link).status_code == 303  # back to the success page
    with services.database.read() as session:
        succeeded = session.scalar(
            select(func.count())
            .select_from(Payment)
            .where(Payment.account_id == agent.account_id, Payment.status == "succeeded")
        )
    assert succeeded == 1
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_double_submitted_form_charges_once(api: Api, services: Services) -> None:
    agent = api.new_agent()
    link = _link(agent, 20)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: _pay(link), range(8)))
    assert 303 in [r.status_code for r in results]
    assert agent.balance() == 20
    with services.database.read() as session:
        count = session.scalar(
            select(func.count()).select_from(Payment).where(Payment.account_id == agent.account_id)
        )
    assert count == 1


def test_expired_link(api: Api, services: Services) -> None:
    agent = api.new_agent()
    link = _link(agent)
    with services.database.transaction() as session:
        session.execute(
            update(CheckoutSession)
            .where(CheckoutSession.id == link["session_id"])
            .values(expires_at=now() - timedelta(seconds=1))
        )
    page = requests.get(link["payment_url"])
    assert page.status_code == 410
    assert "expired" in page.text
    assert _pay(link).status_code == 410
    response = agent.post("/wallet/confirm-checkout", {"session_id": link["session_id"]})
    assert_error(response, 410, "checkout_expired")
    Worker(services).drain(at=now() + timedelta(hours=2))  # the expiry job
    with services.database.read() as session:
        status = session.scalar(
            select(CheckoutSession.status).where(CheckoutSession.id == link["session_id"])
        )
    assert status == "expired"
    assert agent.balance() == 0
    assert requests.get(f"{api.base_url}/pay/cs_unknown").status_code == 404
