"""The reference's setup-intent flow: save a card without charging it, then reuse it."""

from __future__ import annotations

import requests

from tests import reference as ref
from tests.helpers import CARD_DECLINED, CARD_REQUIRES_AUTH, Agent, Api, assert_error

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")


def _confirm(api_base: str, stripe_pk: str, setup: dict, number: str) -> requests.Response:
    return requests.post(
        f"{api_base}/v1/setup_intents/{setup['setup_intent_id']}/confirm",
        auth=(stripe_pk, ""),
        data={
            "payment_method_data[type]": "card",
            "payment_method_data[card][number]": number,
            "payment_method_data[card][exp_month]": 12,
            "payment_method_data[card][exp_year]": 2030,
            "payment_method_data[card][cvc]": "123",
        },
    )


def test_setup_intent_flow(api: Api) -> None:
    ref.configure(api.base_url)
    agent = api.new_agent()
    token = agent.token
    api_base = ref.get_stripe_config(token)["api_base"]

    setup = ref.create_setup_intent(token)
    client_secret = setup["client_secret"]
    assert client_secret.startswith(setup["setup_intent_id"] + "_secret_")
    stripe_pk = ref.get_stripe_config(token)["publishable_key"]
    confirm_resp = _confirm(api_base, stripe_pk, setup, "4242424242424242")
    assert confirm_resp.json()["status"] == "succeeded"
    pm_id = confirm_resp.json()["payment_method"]  # as the reference reads it

    saved = ref.add_payment_method(token, pm_id, make_default=True)
    assert (saved["id"], saved["is_default"], saved["last4"]) == (pm_id, True, "4242")
    result = ref.fund_wallet(token, 50, payment_method_id=pm_id)
    assert result["status"] == "succeeded"
    assert agent.balance() == 50
    # Confirming again is a no-op answer, like Stripe's for a succeeded intent.
    assert _confirm(api_base, stripe_pk, setup, "4242424242424242").json()["status"] == "succeeded"


def test_setup_intent_outcomes_for_test_cards(api: Api) -> None:
    agent: Agent = api.new_agent()
    config = api.stripe_config(agent)
    setup = agent.post("/billing/setup-intent").json()["data"]
    declined = _confirm(config["api_base"], config["publishable_key"], setup, CARD_DECLINED)
    assert declined.status_code == 402
    assert declined.json()["error"]["decline_code"] == "generic_decline"
    assert declined.json()["error"]["setup_intent"]["status"] == "requires_payment_method"

    setup = agent.post("/billing/setup-intent").json()["data"]
    needs_auth = _confirm(config["api_base"], config["publishable_key"], setup, CARD_REQUIRES_AUTH)
    assert needs_auth.status_code == 200
    assert needs_auth.json()["status"] == "requires_action"
    assert needs_auth.json()["next_action"]["type"] == "use_stripe_sdk"

    wrong_key = requests.post(
        f"{config['api_base']}/v1/setup_intents/{setup['setup_intent_id']}/confirm",
        auth=("pk_wrong", ""),
        data={"payment_method_data[type]": "card"},
    )
    assert wrong_key.status_code == 401
    missing = requests.post(
        f"{config['api_base']}/v1/setup_intents/seti_nope/confirm",
        auth=(config["publishable_key"], ""),
        data={"payment_method": "pm_nope"},
    )
    assert missing.status_code == 404
    # Nothing was saved on the account by these attempts.
    assert agent.get("/billing/payment-methods").json()["data"]["items"] == []
    assert_error(agent.post("/wallet/fund", {"amount": 10}), 422, "payment_method_required")
