"""Coupons: every refusal, purchase bonuses, exactly-once redemption under races."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest

from billfold.clock import now
from tests.helpers import CARD_DECLINED, Agent, Api, assert_error, decimal_json

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")


def _coupon(api: Api, **fields: object) -> str:
    code = f"C{uuid.uuid4().hex[:10].upper()}"
    response = api.admin_post("/coupons", {"code": code, **fields})
    assert response.status_code == 201, response.text
    return code


def _validate(agent: Agent, code: str, purchase: object = None) -> dict:
    params = {"coupon_code": code}
    if purchase is not None:
        params["purchase_amount"] = purchase
    response = agent.get("/wallet/coupons/validate", params=params)
    assert response.status_code == 200, response.text
    data: dict = decimal_json(response)["data"]
    return data


def _redeem(agent: Agent, code: str, **extra: object):
    return agent.post("/wallet/coupons/redeem", {"coupon_code": code, **extra})


def test_credit_coupon_validates_and_redeems_once(api: Api) -> None:
    agent = api.new_agent()
    code = _coupon(api, kind="credit", amount=5, max_redemptions=10)
    info = _validate(agent, code.lower())  # codes are case-insensitive
    assert info["valid"] is True
    assert info["error"] is None
    assert (info["kind"], info["credit_amount"], info["remaining_redemptions"]) == (
        "credit",
        5,
        10,
    )
    redeemed = _redeem(agent, code)
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["data"]["credit_amount"] == 5
    balance = decimal_json(agent.get("/wallet/balance"))["data"]
    assert balance["breakdown"]["promotional"] == 5
    assert balance["withdrawable"] == 0
    assert _validate(agent, code)["error"]["code"] == "coupon_already_redeemed"
    assert_error(_redeem(agent, code), 409, "coupon_already_redeemed")
    assert agent.balance() == 5
    assert api.ledger_check(agent.account_id)["consistent"] is True


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"valid_until": "2020-01-01T00:00:00Z"}, "coupon_expired"),
        ({"max_redemptions": 1, "exhaust": True}, "coupon_exhausted"),
        ({"archive": True}, "coupon_expired"),
    ],
)
def test_refusals_as_data_and_as_errors(api: Api, fields: dict, code: str) -> None:
    fields = dict(fields)  # shared between the parametrized runs
    exhaust = fields.pop("exhaust", False)
    archive = fields.pop("archive", False)
    coupon = _coupon(api, kind="credit", amount=3, **fields)
    if exhaust:
        assert _redeem(api.new_agent(), coupon).status_code == 200
    if archive:
        assert api.admin_post(f"/coupons/{coupon}/archive").status_code == 200
    agent = api.new_agent()
    info = _validate(agent, coupon)
    assert info["valid"] is False
    assert info["error"]["code"] == code
    assert info["error"]["message"]
    response = _redeem(agent, coupon)
    assert response.status_code in (409, 410)
    assert_error(response, response.status_code, code)
    assert agent.balance() == 0


def test_unknown_and_not_yet_valid(api: Api) -> None:
    agent = api.new_agent()
    assert _validate(agent, "NOSUCHCODE")["error"]["code"] == "coupon_not_found"
    assert_error(_redeem(agent, "NOSUCHCODE"), 404, "coupon_not_found")
    # Two days from now: the agent lives on real time (it is on no test clock).
    later = (now() + timedelta(days=2)).isoformat()
    coupon = _coupon(api, kind="credit", amount=3, valid_from=later)
    assert _validate(agent, coupon)["error"]["code"] == "coupon_not_yet_valid"
    assert_error(api.admin_post("/coupons", {"code": coupon, "kind": "credit", "amount": 1}), 409)
    for bad in (
        {"kind": "credit"},
        {"kind": "bonus_percent", "amount": 5},
        {"kind": "bonus_percent", "percent": 150},
        {"kind": "credit", "amount": 5, "valid_until": "2030-01-01T00:00:00"},
        {"kind": "credit", "amount": -5},
    ):
        assert_error(api.admin_post("/coupons", {"code": "BAD-ONE", **bad}), 422)


def test_purchase_coupon_charges_and_adds_the_bonus(api: Api) -> None:
    agent = api.new_agent()
    code = _coupon(api, kind="bonus_percent", percent="12.5", min_purchase=20)
    assert _validate(agent, code)["error"]["code"] == "purchase_below_minimum"
    assert _validate(agent, code, 15)["error"]["code"] == "purchase_below_minimum"
    info = _validate(agent, code, 40)
    assert (info["valid"], info["bonus_amount"], info["total_credit"]) == (True, 5, 45)

    pm = agent.card()
    assert_error(
        _redeem(agent, code, purchase_amount=15, payment_method_id=pm),
        422,
        "purchase_below_minimum",
    )
    redeemed = _redeem(agent, code, purchase_amount=40, payment_method_id=pm)
    assert redeemed.status_code == 200, redeemed.text
    data = decimal_json(redeemed)["data"]
    assert (data["purchase_amount"], data["credit_amount"], data["balance"]) == (40, 5, 45)
    breakdown = decimal_json(agent.get("/wallet/balance"))["data"]["breakdown"]
    assert breakdown == {"subscription": 0, "promotional": 5, "purchased": 40}
    status = agent.get(f"/payments/{data['payment_intent_id']}/status").json()["data"]
    assert (status["purpose"], status["amount"]) == ("coupon_purchase", 40)
    # Promotional credit goes first; only purchased credit can be withdrawn.
    api.charge_usage(agent.account_id, 6)
    breakdown = decimal_json(agent.get("/wallet/balance"))["data"]["breakdown"]
    assert breakdown == {"subscription": 0, "promotional": 0, "purchased": 39}
    # Withdrawing the purchase takes its bonus back: the $5 bonus was spent, so $5 of
    # the purchased credit stays behind for it.
    assert decimal_json(agent.get("/wallet/balance"))["data"]["withdrawable"] == 34
    assert_error(agent.post("/wallet/withdraw", {"amount": "34.01"}), 402, "insufficient_funds")
    withdrawn = agent.post("/wallet/withdraw", {"amount": 34})
    assert withdrawn.status_code == 200, withdrawn.text
    assert decimal_json(withdrawn)["data"]["balance"] == 0
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_declined_purchase_gives_the_coupon_back(api: Api) -> None:
    agent = api.new_agent()
    code = _coupon(api, kind="bonus_fixed", amount=10, min_purchase=10, max_redemptions=1)
    declined = _redeem(agent, code, purchase_amount=25, payment_method_id=agent.card(CARD_DECLINED))
    error = assert_error(declined, 402, "payment_declined")
    assert error["details"]["decline_code"] == "generic_decline"
    assert agent.balance() == 0
    assert _validate(agent, code, 25)["valid"] is True  # still redeemable, by this account
    ok = _redeem(agent, code, purchase_amount=25, payment_method_id=agent.card())
    assert ok.status_code == 200, ok.text
    assert agent.balance() == 35
    assert_error(_redeem(agent, code, purchase_amount=25), 409)


def test_last_redemption_race_has_one_winner(api: Api) -> None:
    code = _coupon(api, kind="credit", amount=2, max_redemptions=1)
    agents = [api.new_agent() for _ in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda a: _redeem(a, code), agents))
    winners = [r for r in results if r.status_code == 200]
    assert len(winners) == 1
    for response in results:
        if response.status_code != 200:
            assert_error(response, 409, "coupon_exhausted")
    assert sorted(a.balance() for a in agents) == [0] * 5 + [Decimal(2)]


def test_same_account_racing_itself_redeems_once(api: Api) -> None:
    agent = api.new_agent()
    code = _coupon(api, kind="credit", amount=2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: _redeem(agent, code), range(8)))
    assert [r.status_code for r in results].count(200) == 1
    assert agent.balance() == 2


def test_operator_lists_and_archives(api: Api) -> None:
    code = _coupon(api, kind="bonus_fixed", amount="2.5", min_purchase=10)
    listed = api.admin_get("/coupons").json()["data"]
    mine = next(c for c in listed if c["code"] == code)
    assert (mine["kind"], mine["bonus_amount"], mine["min_purchase"]) == ("bonus_fixed", 2.5, 10)
    archived = api.admin_post(f"/coupons/{code}/archive").json()["data"]
    assert archived["status"] == "archived"
