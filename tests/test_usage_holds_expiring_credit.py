"""Included (subscription) credit a usage hold keeps while its grant expires: it does not
come back spendable. What a capture spends of it is spent; the rest expires when the hold
gives it back (release, capture for less, the hold's own expiry). Both databases, the
usage batch path and the careful one."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from billfold.services import Services
from tests.conservation_helpers import included_credit
from tests.helpers import Agent, Api, TestClock, assert_error, decimal_json, while_charging
from tests.subscription_helpers import (
    advance_to,
    create_plan,
    grants_of,
    instant,
    invoices_of,
    ledger_of,
    subscribe,
    subscriber,
)

D = Decimal


def _hold(api: Api, agent: Agent, amount: str) -> dict[str, Any]:
    created = api.admin_post(
        "/usage-holds",
        {"account_id": agent.account_id, "amount": amount, "usecase": "llm", "ttl_seconds": 7200},
    )
    assert created.status_code == 201, created.text
    data: dict[str, Any] = decimal_json(created)["data"]
    return data


def _subscribed_with_a_hold_over_the_end(
    api: Api, *, renews: bool
) -> tuple[Agent, TestClock, dict[str, Any], Any]:
    """A subscriber with 3 included credits, all held from an hour before the period's
    end to five minutes after it (the grant expired meanwhile)."""
    plan = create_plan(api, price=20, included_credits=3)
    clock = api.new_clock()
    agent, card = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], card)
    if not renews:
        ended = agent.post(f"/subscriptions/{sub['id']}/cancel", {"at_period_end": True})
        assert ended.status_code == 200, ended.text
    end = instant(sub["current_period_end"])
    advance_to(clock, end - timedelta(hours=1))
    assert agent.balance() == D(3)
    held = _hold(api, agent, "3")
    assert held["breakdown"]["subscription"] == D(3)
    advance_to(clock, end + timedelta(minutes=5))
    return agent, clock, held, end


def _settle(api: Api, clock: TestClock, end: Any, hold_id: str, how: str) -> None:
    if how == "release":
        done = api.admin_post(f"/usage-holds/{hold_id}/release", {})
    elif how == "expiry":  # the hold's own expiry, two hours after it was made
        advance_to(clock, end + timedelta(hours=2))
        return
    else:
        amount = {"capture_part": {"amount": "1"}, "capture_all": {}}[how]
        done = api.admin_post(f"/usage-holds/{hold_id}/capture", amount)
    assert done.status_code == 200, done.text


SPENT = {"release": D(0), "expiry": D(0), "capture_part": D(1), "capture_all": D(3)}


@pytest.mark.parametrize("renews", [False, True], ids=["ended", "renewed"])
@pytest.mark.parametrize("how", list(SPENT))
def test_included_credit_held_past_its_expiry_never_comes_back(
    api: Api, services: Services, how: str, renews: bool
) -> None:
    agent, clock, held, end = _subscribed_with_a_hold_over_the_end(api, renews=renews)
    next_grant = D(3) if renews else D(0)  # the renewal's new included credits
    assert agent.balance() == next_grant  # the held 3 are off the balance

    _settle(api, clock, end, held["id"], how)

    # Whatever the capture did not spend of the expired credit is gone; the new
    # period's credits are untouched.
    assert agent.balance() == next_grant
    kept, live = included_credit(services, agent)
    assert kept <= live, (kept, live)  # the conservation test's invariant
    grants_side = sum(
        (
            postings.get("subscription:grants", D(0))
            for _, postings in ledger_of(services, agent.account_id)
        ),
        D(0),
    )
    assert grants_side == -(next_grant + SPENT[how])  # granted, less what expired
    assert api.ledger_check(agent.account_id)["consistent"] is True
    # Still nothing more to spend twenty days on.
    advance_to(clock, end + timedelta(days=20))
    refused = api.charge_usage(agent.account_id, str(next_grant + D("0.5")))
    assert refused.status_code == 402, refused.text


def test_the_grant_records_what_holds_kept_at_its_expiry(api: Api, services: Services) -> None:
    agent, _, _, _ = _subscribed_with_a_hold_over_the_end(api, renews=False)
    [grant] = grants_of(services, agent.account_id)
    assert (grant.status, grant.expired_micros) == ("expired", 0)
    assert (grant.meta or {}).get("held_at_expiry_micros") == 3_000_000


@pytest.mark.parametrize("then", ["release", "capture"])
@pytest.mark.parametrize("ends", ["cancel", "reset"])
def test_ending_a_period_early_waits_for_holds_on_its_included_credit(
    api: Api, services: Services, then: str, ends: str
) -> None:
    """Cancel now and reset prorate the period's included credits as used or not, and a
    hold's credit is neither until it is captured or released: while one keeps some,
    they answer 409 and change nothing; after, the credit counts as what became of it
    (released: unused, nothing deducted; captured: used, deducted as used ahead)."""
    plan = create_plan(api, price=20, included_credits=3)
    clock = api.new_clock()
    agent, card = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], card)
    held = _hold(api, agent, "3")
    path, body = {
        "cancel": (f"/subscriptions/{sub['id']}/cancel", {"at_period_end": False}),
        "reset": (f"/subscriptions/{sub['id']}/reset-cycle", {}),
    }[ends]
    before = ledger_of(services, agent.account_id)
    refused = agent.post(path, body)
    assert_error(refused, 409, "subscription_credits_held")
    assert refused.json()["error"]["details"]["held"] == 3
    assert ledger_of(services, agent.account_id) == before
    assert agent.get(f"/subscriptions/{sub['id']}").json()["data"]["status"] == "active"

    done = api.admin_post(f"/usage-holds/{held['id']}/{then}", {})
    assert done.status_code == 200, done.text
    ended = agent.post(path, body)
    assert ended.status_code == 200, ended.text
    used = D(3) if then == "capture" else D(0)
    if ends == "cancel":
        [unused] = [
            postings["wallet:promotional"]
            for kind, postings in ledger_of(services, agent.account_id)
            if kind == "subscription_unused_time"
        ]
        assert D("19.9") - used <= unused <= D(20) - used  # less the credits used ahead
        assert agent.balance() == unused
    else:
        [_, reset] = invoices_of(services, agent.account_id)
        assert D("0.00") + used <= reset.total <= D("0.1") + used  # less the unused time
    assert api.ledger_check(agent.account_id)["consistent"] is True


@pytest.mark.parametrize("how", ["usage_charge", "hold_captured", "hold_released"])
def test_included_credit_held_while_a_reset_is_paid_goes_on_into_the_new_period(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The reset's request is refused while holds keep included credit, but one can be
    made while its payment is on its way. The new period's grant carries that held
    credit on: captured, it is spent as a usage charge made then would have been (the
    new period's credits, less it); released, the new period's credits are whole."""
    plan = create_plan(api, price=20, included_credits=3)
    clock = api.new_clock()
    agent, card = subscriber(api, clock)
    sub = subscribe(agent, plan["id"], card)
    held: list[dict[str, Any]] = []

    def use_the_credits() -> None:
        if how == "usage_charge":
            charged = api.charge_usage(agent.account_id, "3")
            assert charged.status_code == 201, charged.text
        else:
            held.append(_hold(api, agent, "3"))

    with while_charging(monkeypatch, services, use_the_credits):
        reset = agent.post(f"/subscriptions/{sub['id']}/reset-cycle", {})
    assert reset.status_code == 200, reset.text
    if how != "usage_charge":
        then = "capture" if how == "hold_captured" else "release"
        done = api.admin_post(f"/usage-holds/{held[0]['id']}/{then}", {})
        assert done.status_code == 200, done.text
    assert agent.balance() == (D(3) if how == "hold_released" else D(0))
    kept, live = included_credit(services, agent)
    assert kept <= live, (kept, live)
    assert api.ledger_check(agent.account_id)["consistent"] is True
