"""An account can never see or touch another account's objects: always 404, never data."""

from __future__ import annotations

from tests.helpers import Api, assert_error


def test_another_accounts_objects_are_404_everywhere(api: Api) -> None:
    owner = api.new_agent()
    intruder = api.new_agent()
    funded = owner.fund(30)
    assert funded.status_code == 200, funded.text
    payment_id = funded.json()["data"]["payment_intent_id"]
    pm_id = funded.json()["data"]["payment_method_id"]
    intruder.fund(10)  # the intruder has a card of its own

    attempts = [
        intruder.get(f"/payments/{payment_id}/status"),
        intruder.put(f"/billing/payment-methods/{pm_id}/default"),
        intruder.delete(f"/billing/payment-methods/{pm_id}"),
        intruder.post("/billing/payment-methods", {"payment_method_id": pm_id}),
        intruder.post("/wallet/fund", {"amount": 10, "payment_method_id": pm_id}),
    ]
    for response in attempts:
        error = assert_error(response, 404)
        assert owner.account_id not in response.text
        assert "4242" not in response.text
        assert error["code"] in {"payment_not_found", "payment_method_not_found"}

    # Nothing moved for either account.
    assert owner.balance() == 30
    assert intruder.balance() == 10
    methods = owner.get("/billing/payment-methods").json()["data"]
    assert [m["id"] for m in methods["items"]] == [pm_id]
    assert methods["items"][0]["is_default"] is True
    assert owner.get(f"/payments/{payment_id}/status").status_code == 200


def test_unknown_ids_are_404_too(api: Api) -> None:
    agent = api.new_agent()
    assert_error(agent.get("/payments/pi_doesnotexist/status"), 404, "payment_not_found")
    assert_error(agent.put("/billing/payment-methods/pm_nope/default"), 404)
    assert_error(agent.delete("/billing/payment-methods/pm_nope"), 404)
    assert_error(agent.post("/billing/payment-methods", {"payment_method_id": "pm_nope"}), 404)
    assert_error(api.charge_usage("acct_doesnotexist", 1), 404, "account_not_found")
    assert_error(api.admin_get("/accounts/acct_doesnotexist"), 404)


def test_another_accounts_subscriptions_are_404_everywhere(api: Api) -> None:
    from tests.subscription_helpers import create_plan, status, subscribe, subscriber

    plan = create_plan(api, price=7)
    owner, pm = subscriber(api)
    sub = subscribe(owner, plan["id"], pm)
    link = owner.post("/subscriptions", {"plan_id": create_plan(api, price=8)["id"]})
    assert link.status_code == 409  # the owner already has a normal subscription
    intruder, _ = subscriber(api)
    path = f"/subscriptions/{sub['id']}"
    attempts = [
        intruder.get(path),
        intruder.get(f"{path}/status"),
        intruder.put(path, {"new_plan_id": plan["id"]}),
        *(
            intruder.post(f"{path}/{action}")
            for action in ("pause", "resume", "reset-cycle", "fix-payment", "cancel")
        ),
        intruder.post("/subscriptions", {"plan_id": plan["id"], "payment_method_id": pm}),
    ]
    for response in attempts:
        error = assert_error(response, 404)
        assert owner.account_id not in response.text
        assert error["code"] in {"subscription_not_found", "payment_method_not_found"}
    assert intruder.get("/subscriptions").json()["data"]["items"] == []
    unchanged = status(owner, sub["id"])
    assert (unchanged["status"], unchanged["cancel_at_period_end"]) == ("active", False)
