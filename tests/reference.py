"""The reference billing skill's client code, as agents run it against Billfold.

Copied from ../shared/seed/000_2b60a7fba1350ceb.txt with only the base URLs changed:
BASE points at the Billfold under test, and card tokenization goes to STRIPE_API (the
`api_base` from /billing/stripe-config) instead of api.stripe.com. `configure()` sets
both. Prints in the originals are left out; the logic is untouched.
"""

from __future__ import annotations

import time

import requests

BASE = ""
STRIPE_API = ""


def configure(base_url: str) -> None:
    global BASE, STRIPE_API
    BASE = f"{base_url}/api/agents/v1"
    STRIPE_API = f"{base_url}/sandbox"


def headers(token):
    return {"Authorization": f"Bearer {token}"}


def get_billing_overview(token):
    resp = requests.get(f"{BASE}/billing/overview", headers=headers(token))
    return resp.json()["data"]


def get_stripe_config(token):
    resp = requests.get(f"{BASE}/billing/stripe-config", headers=headers(token))
    return resp.json()["data"]


def create_payment_method(card_number, exp_month, exp_year, cvc, stripe_pk):
    resp = requests.post(
        f"{STRIPE_API}/v1/payment_methods",
        auth=(stripe_pk, ""),
        data={
            "type": "card",
            "card[number]": card_number,
            "card[exp_month]": exp_month,
            "card[exp_year]": exp_year,
            "card[cvc]": cvc,
        },
    )
    return resp.json()["id"]


def create_setup_intent(token):
    resp = requests.post(f"{BASE}/billing/setup-intent", headers=headers(token))
    return resp.json()["data"]


def create_payment_link(token, purpose, amount=None, plan_id=None):
    payload = {"purpose": purpose}
    if amount is not None:
        payload["amount"] = amount
    if plan_id is not None:
        payload["plan_id"] = plan_id
    resp = requests.post(f"{BASE}/billing/payment-link", headers=headers(token), json=payload)
    return resp.json()["data"]


def confirm_wallet_checkout(token, session_id):
    resp = requests.post(
        f"{BASE}/wallet/confirm-checkout",
        headers=headers(token),
        json={"session_id": session_id},
    )
    return resp.json()["data"]


def list_payment_methods(token):
    resp = requests.get(f"{BASE}/billing/payment-methods", headers=headers(token))
    return resp.json()["data"]


def add_payment_method(token, payment_method_id, make_default=True):
    resp = requests.post(
        f"{BASE}/billing/payment-methods",
        headers=headers(token),
        json={"payment_method_id": payment_method_id, "make_default": make_default},
    )
    return resp.json()["data"]


def set_default_payment_method(token, payment_method_id):
    requests.put(
        f"{BASE}/billing/payment-methods/{payment_method_id}/default", headers=headers(token)
    )


def remove_payment_method(token, payment_method_id):
    requests.delete(f"{BASE}/billing/payment-methods/{payment_method_id}", headers=headers(token))


def get_billing_info(token):
    resp = requests.get(f"{BASE}/billing/info", headers=headers(token))
    return resp.json()["data"]


def update_billing_info(token, **kwargs):
    resp = requests.put(f"{BASE}/billing/info", headers=headers(token), json=kwargs)
    return resp.json()["data"]


def get_wallet_balance(token):
    resp = requests.get(f"{BASE}/wallet/balance", headers=headers(token))
    return resp.json()["data"]


def get_wallet_transactions(token, type=None, limit=50, offset=0):
    params = {"limit": limit, "offset": offset}
    if type:
        params["type"] = type
    resp = requests.get(f"{BASE}/wallet/transactions", headers=headers(token), params=params)
    return resp.json()["data"]


def fund_wallet(token, amount, payment_method_id=None, idempotency_key=None):
    payload = {"amount": amount}
    if payment_method_id:
        payload["payment_method_id"] = payment_method_id
    h = headers(token)
    if idempotency_key:
        h["Idempotency-Key"] = idempotency_key
    resp = requests.post(f"{BASE}/wallet/fund", headers=h, json=payload)
    return resp.json()["data"]


def get_payment_status(token, payment_intent_id):
    resp = requests.get(f"{BASE}/payments/{payment_intent_id}/status", headers=headers(token))
    return resp.json()["data"]


def withdraw(token, amount):
    resp = requests.post(f"{BASE}/wallet/withdraw", headers=headers(token), json={"amount": amount})
    return resp.json()["data"]


def ensure_account_funded(token, min_balance=10, top_up_amount=50):
    overview = get_billing_overview(token)
    balance = overview.get("wallet_balance", 0)
    if balance < min_balance:
        fund_wallet(token, top_up_amount)


def fund_via_human(token, amount, poll_interval=5, max_wait=300, show_link=print):
    """`show_link` stands for the reference's print of payment_url to the human."""
    initial = get_wallet_balance(token)["balance"]  # noqa: F841 - as in the reference
    link = create_payment_link(token, purpose="fund", amount=amount)
    show_link(link)
    elapsed = 0
    while elapsed < max_wait:
        time.sleep(poll_interval)
        elapsed += poll_interval
        try:
            result = confirm_wallet_checkout(token, link["session_id"])
            return result
        except Exception:
            pass
    return None


def confirm_subscription_checkout(token, session_id):
    resp = requests.post(
        f"{BASE}/subscriptions/confirm-checkout",
        headers=headers(token),
        json={"session_id": session_id},
    )
    return resp.json()["data"]


def list_plans(token):
    resp = requests.get(f"{BASE}/subscriptions/plans", headers=headers(token))
    return resp.json()["data"]


def list_subscriptions(token):
    resp = requests.get(f"{BASE}/subscriptions", headers=headers(token))
    return resp.json()["data"]


def create_subscription(token, plan_id, success_url=None):
    payload = {"plan_id": plan_id}
    if success_url:
        payload["success_url"] = success_url
    resp = requests.post(f"{BASE}/subscriptions", headers=headers(token), json=payload)
    return resp.json()["data"]


def create_subscription_headless(token, plan_id, payment_method_id, idempotency_key=None):
    h = headers(token)
    if idempotency_key:
        h["Idempotency-Key"] = idempotency_key
    resp = requests.post(
        f"{BASE}/subscriptions",
        headers=h,
        json={"plan_id": plan_id, "payment_method_id": payment_method_id},
    )
    return resp.json()["data"]


def get_subscription_status(token, subscription_id):
    resp = requests.get(f"{BASE}/subscriptions/{subscription_id}/status", headers=headers(token))
    return resp.json()["data"]


def update_subscription(token, subscription_id, new_plan_id):
    resp = requests.put(
        f"{BASE}/subscriptions/{subscription_id}",
        headers=headers(token),
        json={"new_plan_id": new_plan_id},
    )
    return resp.json()["data"]


def pause_subscription(token, subscription_id):
    resp = requests.post(f"{BASE}/subscriptions/{subscription_id}/pause", headers=headers(token))
    return resp.json()["data"]


def resume_subscription(token, subscription_id):
    resp = requests.post(f"{BASE}/subscriptions/{subscription_id}/resume", headers=headers(token))
    return resp.json()["data"]


def reset_subscription_cycle(token, subscription_id):
    requests.post(f"{BASE}/subscriptions/{subscription_id}/reset-cycle", headers=headers(token))


def charge_subscription_amount(token, amount):
    resp = requests.post(
        f"{BASE}/subscriptions/charge-amount", headers=headers(token), json={"amount": amount}
    )
    return resp.json()["data"]


def fix_payment(token, subscription_id):
    requests.post(f"{BASE}/subscriptions/{subscription_id}/fix-payment", headers=headers(token))
