"""Use cases called directly, as an MCP tool or a CLI command would: a `Services`, no HTTP.

Writes answer a `Reply` and honour an idempotency key; reads answer typed models that render
the same JSON as the views they are built from; nothing under `application/` imports a web
framework.
"""

from __future__ import annotations

import ast
import json
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import billfold.application
from billfold.accounts import service as accounts
from billfold.accounts.schemas import (
    AccountOut,
    CreateAccountRequest,
    IssueTokenRequest,
    LoginRequest,
)
from billfold.application.testclock import on_account_clock
from billfold.application.usecases import (
    Call,
    Reply,
    billing,
    checkout,
    coupons,
    payments,
    plans,
    sandbox,
    subscriptions,
    testclock,
    usage,
    wallet,
    webhooks,
)
from billfold.application.usecases import (
    accounts as account_usecases,
)
from billfold.billing.schemas import BillingInfoOut
from billfold.checkout.schemas import (
    ConfirmCheckoutRequest,
    ConfirmedCheckoutOut,
    FundLinkOut,
    PaymentLinkRequest,
)
from billfold.coupons import service as coupon_service
from billfold.coupons.schemas import (
    CouponValidationOut,
    CreateCouponRequest,
    InvalidCouponOut,
    RedeemCouponRequest,
    ValidBonusCouponOut,
    ValidCouponOut,
)
from billfold.errors import BillfoldError, ErrorCode
from billfold.jsonenc import render
from billfold.payments import service as payment_service
from billfold.payments.schemas import (
    AttachPaymentMethodRequest,
    PaymentMethodList,
    PaymentMethodOut,
    PaymentOut,
    StripeConfigOut,
)
from billfold.services import Services
from billfold.subscriptions import views as subscription_views
from billfold.subscriptions.schemas import (
    CancelRequest,
    ChangePlanRequest,
    CreatePlanRequest,
    CreateSubscriptionRequest,
    PlanOut,
    PlansOut,
    SubscribeLinkOut,
    SubscriptionListOut,
    SubscriptionOut,
)
from billfold.testclock.schemas import AdvanceRequest, CreateTestClockRequest, TestClockOut
from billfold.wallet import service as wallet_service
from billfold.wallet.schemas import (
    BalanceOut,
    FundRequest,
    TransactionOut,
    TransactionPage,
    UsageChargeRequest,
)
from billfold.webhooks import service as webhook_service
from billfold.webhooks.schemas import CreateEndpoint, EndpointOut
from tests.helpers import CARD_DECLINED, CARD_OK

WEB_FRAMEWORKS = ("fastapi", "starlette")


def _account(services: Services) -> str:
    with services.database.transaction() as session:
        account = accounts.create_account(
            session, email=f"uc-{uuid.uuid4().hex[:12]}@example.com", password="long enough"
        )
        return account.id


def _card(services: Services, number: str = CARD_OK) -> str:
    payment_method = sandbox.create_payment_method(
        services,
        form={
            "type": "card",
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": str(date.today().year + 2),
            "card[cvc]": "123",
        },
        client=f"test-{uuid.uuid4().hex[:8]}",
    )
    return payment_method.id


def _data(reply: Reply) -> Any:
    return json.loads(reply.body, parse_float=Decimal)["data"]


def _fund(services: Services, account_id: str, amount: int, key: str | None) -> Reply:
    args = {"amount": amount, "payment_method_id": _card(services)}
    return wallet.fund(
        services,
        call=Call.of("wallet.fund", args, key=key),
        account_id=account_id,
        body=FundRequest.model_validate(args),
    )


def test_nothing_under_application_imports_a_web_framework() -> None:
    """Every import statement counts, function-local and TYPE_CHECKING ones included."""
    root = Path(billfold.application.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in WEB_FRAMEWORKS or name.startswith("billfold.api"):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} imports {name}")
    assert len(list(root.rglob("usecases/*.py"))) >= 7
    assert found == []


def test_a_write_with_a_key_runs_once_and_replays_its_reply(services: Services) -> None:
    account_id = _account(services)
    args = {"amount": 25, "payment_method_id": _card(services)}
    key = f"fund-{uuid.uuid4().hex}"

    def fund(arguments: dict[str, Any]) -> Reply:
        return wallet.fund(
            services,
            call=Call.of("wallet.fund", arguments, key=key),
            account_id=account_id,
            body=FundRequest.model_validate(arguments),
        )

    first = fund(args)
    assert first.status_code == 200
    assert not first.replayed
    assert _data(first)["balance"] == 25
    # The same arguments, written differently (a number is the same number however written).
    again = fund({"payment_method_id": args["payment_method_id"], "amount": Decimal("25.00")})
    assert again.replayed
    assert (again.status_code, again.body) == (first.status_code, first.body)
    assert wallet.balance(services, account_id=account_id).balance == 25

    with pytest.raises(BillfoldError) as refused:
        fund({**args, "amount": 30})
    assert refused.value.code == ErrorCode.IDEMPOTENCY_KEY_REUSED
    # Keys are the account's own: another account's same key runs afresh.
    other = _account(services)
    theirs = {**args, "payment_method_id": _card(services)}
    elsewhere = wallet.fund(
        services,
        call=Call.of("wallet.fund", theirs, key=key),
        account_id=other,
        body=FundRequest.model_validate(theirs),
    )
    assert not elsewhere.replayed
    assert elsewhere.status_code == 200


def test_a_refusal_answers_the_error_envelope_stored_under_its_key(
    services: Services,
) -> None:
    account_id = _account(services)
    args = {"account_id": account_id, "amount": "5", "usecase": "inference"}
    body = UsageChargeRequest.model_validate(args)

    # Group-committed charges answer a refusal as a reply (its batch neighbours go on).
    unkeyed = usage.charge_usage(services, call=Call(), body=body)
    assert unkeyed.status_code == 402
    assert json.loads(unkeyed.body)["error"]["code"] == ErrorCode.INSUFFICIENT_FUNDS.value

    call = Call.of("usage.charge", args, key=f"usage-{uuid.uuid4().hex}")
    assert call.request_id.startswith("req_")
    stored = usage.charge_usage(services, call=call, body=body)
    assert stored.status_code == 402
    assert not stored.replayed
    error = json.loads(stored.body)["error"]
    assert error["code"] == "insufficient_funds"
    assert error["request_id"] == call.request_id
    assert set(error) == {"code", "message", "details", "request_id"}
    # Funding the wallet now does not change the stored answer of that key.
    assert _fund(services, account_id, 10, None).status_code == 200
    replay = usage.charge_usage(services, call=call, body=body)
    assert replay.replayed
    assert (replay.status_code, replay.body) == (stored.status_code, stored.body)
    charged = usage.charge_usage(services, call=Call(), body=body)
    assert charged.status_code == 201
    assert _data(charged)["balance_after"] == 5


def test_a_key_must_be_printable_ascii() -> None:
    with pytest.raises(BillfoldError) as refused:
        Call.of("wallet.fund", {}, key="")
    assert refused.value.code == ErrorCode.INVALID_REQUEST
    assert refused.value.details == {"field": "idempotency_key"}
    assert Call.of("a", {"x": 1}).fingerprint != Call.of("b", {"x": 1}).fingerprint
    assert (
        Call.of("a", {"x": 1, "y": 2}).fingerprint == Call.of("a", {"y": 2, "x": 1.0}).fingerprint
    )


def test_reads_answer_typed_models(services: Services) -> None:
    account_id = _account(services)
    assert _fund(services, account_id, 20, None).status_code == 200

    balance = wallet.balance(services, account_id=account_id)
    assert isinstance(balance, BalanceOut)
    assert (balance.balance, balance.breakdown.purchased) == (20, 20)
    page = wallet.transactions(services, account_id=account_id, limit=1)
    assert isinstance(page, TransactionPage)
    assert isinstance(page.items[0], TransactionOut)
    assert (page.items[0].type, page.items[0].amount, page.has_more) == ("credit", 20, False)

    overview = billing.overview(services, account_id=account_id)
    assert overview.wallet_balance == 20
    assert [charge.amount for charge in overview.recent_charges] == [20]
    assert overview.default_payment_method is not None
    assert overview.default_payment_method.last4 == "4242"
    assert isinstance(billing.info(services, account_id=account_id), BillingInfoOut)

    unknown = coupons.validate(services, account_id=account_id, code="NO-SUCH-CODE")
    assert isinstance(unknown.root, InvalidCouponOut)
    assert unknown.root.error.code == ErrorCode.COUPON_NOT_FOUND

    with pytest.raises(BillfoldError) as missing:
        wallet.balance(services, account_id="acct_missing")
    assert missing.value.code == ErrorCode.ACCOUNT_NOT_FOUND


def test_a_coupon_flow_without_http(services: Services) -> None:
    account_id = _account(services)
    code = f"UC{uuid.uuid4().hex[:10]}".upper()
    created = coupons.create(
        services,
        call=Call(),
        body=CreateCouponRequest.model_validate({"code": code, "kind": "credit", "amount": 3}),
    )
    assert created.status_code == 201
    valid = coupons.validate(services, account_id=account_id, code=code)
    assert isinstance(valid.root, ValidCouponOut)
    assert valid.root.credit_amount == 3
    redeemed = coupons.redeem(
        services,
        call=Call(),
        account_id=account_id,
        body=RedeemCouponRequest.model_validate({"coupon_code": code}),
    )
    assert _data(redeemed)["balance"] == 3
    assert wallet.balance(services, account_id=account_id).breakdown.promotional == 3


def _same_json(model: type[BaseModel], view: Any) -> None:
    assert render(model.model_validate(view).model_dump()) == render(view)


def test_response_models_render_their_views_byte_for_byte(services: Services) -> None:
    """Key order and values: a typed read answers exactly what the view answered."""
    account_id = _account(services)
    assert _fund(services, account_id, 30, None).status_code == 200
    bonus = f"UCB{uuid.uuid4().hex[:10]}".upper()
    credit = f"UCC{uuid.uuid4().hex[:10]}".upper()
    for request in (
        {"code": bonus, "kind": "bonus_percent", "percent": "12.5", "max_redemptions": 9},
        {"code": credit, "kind": "credit", "amount": "0.5"},
    ):
        body = CreateCouponRequest.model_validate(request)
        assert coupons.create(services, call=Call(), body=body).status_code == 201
    endpoint = webhooks.create_endpoint(
        services,
        call=Call(),
        body=CreateEndpoint.model_validate({"url": "http://127.0.0.1:9/hook", "enabled": False}),
    )
    with services.database.read() as session:
        views = [
            coupon_service.validate(session, account_id=account_id, code=code, purchase_micros=p)
            for code, p in ((bonus, 20_000_000), (credit, None), ("NOPE-NOPE", None))
        ]
        for view in views:
            _same_json(CouponValidationOut, view)
        kinds = [type(CouponValidationOut.model_validate(v).root) for v in views]
        assert kinds == [ValidBonusCouponOut, ValidCouponOut, InvalidCouponOut]
        items, _ = wallet_service.list_transactions(
            session, account_id=account_id, type=None, limit=5, offset=0
        )
        for txn in items:
            _same_json(TransactionOut, wallet_service.transaction_view(txn))
        wallet_row = wallet_service.get_wallet(session, account_id)
        _same_json(BalanceOut, wallet_service.balance_view(session, wallet_row))
        row = webhook_service.get_endpoint(session, _data(endpoint)["id"])
        _same_json(EndpointOut, webhook_service.endpoint_view(row))


def _plan(services: Services, price: int, **fields: Any) -> int:
    body = {"name": f"UC {uuid.uuid4().hex[:6]}", "price": price, "period": "month", **fields}
    created = plans.create(services, call=Call(), body=CreatePlanRequest.model_validate(body))
    assert created.status_code == 201
    plan_id: int = _data(created)["id"]
    return plan_id


def test_a_subscription_flow_without_http(services: Services) -> None:
    """Start (charged now), read, pause under a key (replayed), schedule a downgrade, cancel;
    and a start without a card answers a payment link."""
    account_id = _account(services)
    dear, cheap = _plan(services, 30), _plan(services, 12)
    assert isinstance(plans.get(services, plan_id=dear), PlanOut)
    catalogue = plans.catalogue(services)
    assert isinstance(catalogue, PlansOut)
    assert {dear, cheap} <= {p.id for p in catalogue.subscription_plans}

    args = {"plan_id": dear, "payment_method_id": _card(services)}
    started = subscriptions.start(
        services,
        call=Call.of("subscriptions.start", args),
        account_id=account_id,
        body=CreateSubscriptionRequest.model_validate(args),
        base_url="http://unused.example",
    )
    assert started.status_code == 201
    sub_id = _data(started)["id"]
    sub = subscriptions.get(services, account_id=account_id, subscription_id=sub_id)
    assert isinstance(sub, SubscriptionOut)
    assert (sub.status, sub.plan.id, sub.payment_status) == ("active", dear, "paid")
    assert sub.latest_invoice is not None and sub.latest_invoice.amount_paid == 30
    assert wallet.balance(services, account_id=account_id).balance == 0

    key = f"pause-{uuid.uuid4().hex}"
    paused = subscriptions.pause(
        services,
        call=Call.of("subscriptions.pause", {"id": sub_id}, key=key),
        account_id=account_id,
        subscription_id=sub_id,
    )
    assert (paused.status_code, _data(paused)["status"]) == (200, "paused")
    again = subscriptions.pause(
        services,
        call=Call.of("subscriptions.pause", {"id": sub_id}, key=key),
        account_id=account_id,
        subscription_id=sub_id,
    )
    assert again.replayed and again.body == paused.body
    with pytest.raises(BillfoldError) as refused:  # the transition table, without a key
        subscriptions.pause(services, call=Call(), account_id=account_id, subscription_id=sub_id)
    assert refused.value.code == ErrorCode.SUBSCRIPTION_ALREADY_PAUSED
    subscriptions.resume(services, call=Call(), account_id=account_id, subscription_id=sub_id)

    downgraded = subscriptions.change_plan(
        services,
        call=Call(),
        account_id=account_id,
        subscription_id=sub_id,
        body=ChangePlanRequest(new_plan_id=cheap),
    )
    assert _data(downgraded)["scheduled_change"]["plan_id"] == cheap
    canceled = subscriptions.cancel(
        services,
        call=Call(),
        account_id=account_id,
        subscription_id=sub_id,
        body=CancelRequest(at_period_end=False),
    )
    assert _data(canceled)["status"] == "canceled"
    listed = subscriptions.list_for_account(services, account_id=account_id)
    assert isinstance(listed, SubscriptionListOut)
    assert ([s.id for s in listed.items], listed.active) == ([sub_id], [])
    assert billing.overview(services, account_id=account_id).active_subscriptions == []

    link_args = {"plan_id": cheap}
    link = subscriptions.start(
        services,
        call=Call.of("subscriptions.start", link_args),
        account_id=account_id,
        body=CreateSubscriptionRequest.model_validate(link_args),
        base_url="http://front.example/",
    )
    assert link.status_code == 201
    out = SubscribeLinkOut.model_validate(_data(link))
    expected_url = (services.settings.public_url or "http://front.example").rstrip("/")
    assert out.payment_url == out.checkout_url == f"{expected_url}/pay/{out.session_id}"
    assert (out.plan_id, out.amount) == (cheap, 12)


def test_subscription_models_render_their_views_byte_for_byte(services: Services) -> None:
    """Trialing, active with a scheduled change, and incomplete after a declined card (the
    latest invoice with its payment error): each renders exactly as the view it is built
    from, and the billing overview carries them typed."""
    account_id = _account(services)
    normal, cheaper = _plan(services, 25), _plan(services, 10)
    addon = _plan(services, 5, kind="addon", trial_days=7, included_credits="1.5")
    for plan_id in (normal, addon):
        args = {"plan_id": plan_id, "payment_method_id": _card(services)}
        reply = subscriptions.start(
            services,
            call=Call(),
            account_id=account_id,
            body=CreateSubscriptionRequest.model_validate(args),
            base_url="http://unused.example",
        )
        assert reply.status_code == 201
    subs = subscriptions.list_for_account(services, account_id=account_id).items
    assert [s.status for s in subs] == ["trialing", "active"]
    subscriptions.change_plan(
        services,
        call=Call(),
        account_id=account_id,
        subscription_id=subs[1].id,
        body=ChangePlanRequest(new_plan_id=cheaper),
    )
    declined_account = _account(services)
    args = {"plan_id": normal, "payment_method_id": _card(services, CARD_DECLINED)}
    with pytest.raises(BillfoldError) as declined:
        subscriptions.start(
            services,
            call=Call(),
            account_id=declined_account,
            body=CreateSubscriptionRequest.model_validate(args),
            base_url="http://unused.example",
        )
    assert declined.value.status_code == 402

    with services.database.read() as session:
        rows = [
            *subscription_views.list_for_account(session, account_id, live_only=False),
            *subscription_views.list_for_account(session, declined_account, live_only=False),
        ]
        views = [subscription_views.view(session, row) for row in rows]
    assert [v["status"] for v in views] == ["trialing", "active", "incomplete"]
    assert views[1]["scheduled_change"] is not None
    assert views[2]["latest_invoice"]["last_payment_error"]["decline_code"]
    for view in views:
        _same_json(SubscriptionOut, view)
    overview = billing.overview(services, account_id=account_id)
    assert [render(s) for s in overview.active_subscriptions] == [render(v) for v in views[:2]]


def test_cards_and_payments_without_http(services: Services) -> None:
    """Attach (201, then 200 when it is already here), list, make default, read a payment,
    remove (the removed card, deleted: true), a setup intent; the card and payment models
    render their views byte for byte."""
    account_id = _account(services)
    config = payments.stripe_config(services, base_url="http://front.example/")
    assert isinstance(config, StripeConfigOut)
    expected = (services.settings.public_url or "http://front.example").rstrip("/")
    assert config.api_base == f"{expected}/sandbox"

    first, second = _card(services), _card(services)
    for pm_id, make_default in ((first, True), (second, False)):
        args = {"payment_method_id": pm_id, "make_default": make_default}
        added = payments.add_payment_method(
            services,
            call=Call.of("payments.add", args),
            account_id=account_id,
            body=AttachPaymentMethodRequest.model_validate(args),
        )
        assert (added.status_code, _data(added)["id"]) == (201, pm_id)
    again = payments.add_payment_method(
        services,
        call=Call(),
        account_id=account_id,
        body=AttachPaymentMethodRequest(payment_method_id=second, make_default=False),
    )
    assert (again.status_code, _data(again)["is_default"]) == (200, False)
    listed = payments.payment_methods(services, account_id=account_id)
    assert isinstance(listed, PaymentMethodList)
    assert (listed.default_payment_method_id, len(listed.items)) == (first, 2)

    made = payments.set_default_payment_method(
        services, call=Call(), account_id=account_id, payment_method_id=second
    )
    assert _data(made)["is_default"] is True
    funded = _data(_fund(services, account_id, 25, None))
    payment = payments.payment_status(
        services, account_id=account_id, payment_intent_id=funded["payment_intent_id"]
    )
    assert isinstance(payment, PaymentOut)
    assert (payment.status, payment.amount) == ("succeeded", 25)
    with services.database.read() as session:
        for pm in payment_service.list_payment_methods(session, account_id):
            _same_json(PaymentMethodOut, payment_service.payment_method_view(pm))
        row = payment_service.get_payment(
            session, account_id=account_id, payment_intent_id=payment.payment_intent_id
        )
        _same_json(PaymentOut, payment_service.payment_view(row))

    removed = payments.remove_payment_method(
        services, call=Call(), account_id=account_id, payment_method_id=second
    )
    assert (removed.status_code, _data(removed)["id"], _data(removed)["deleted"]) == (
        200,
        second,
        True,
    )
    assert list(_data(removed))[-1] == "deleted"
    assert payments.payment_methods(services, account_id=account_id).default_payment_method_id
    with pytest.raises(BillfoldError) as gone:
        payments.set_default_payment_method(
            services, call=Call(), account_id=account_id, payment_method_id=second
        )
    assert gone.value.status_code == 404

    setup = payments.create_setup_intent(
        services, call=Call(), account_id=account_id, base_url="http://front.example"
    )
    assert setup.status_code == 201
    assert f"{expected}/sandbox/v1/setup_intents/" in _data(setup)["instructions"]


def test_payment_links_without_http(services: Services) -> None:
    """A fund link (paid on the hosted page, then confirmed the same every time) and a
    subscribe link, which is the subscriptions' own link."""
    account_id = _account(services)
    args = {"purpose": "fund", "amount": 15}
    key = f"link-{uuid.uuid4().hex}"
    link = checkout.create_payment_link(
        services,
        call=Call.of("checkout.link", args, key=key),
        account_id=account_id,
        body=PaymentLinkRequest.model_validate(args),
        base_url="http://front.example/",
    )
    assert link.status_code == 201
    out = FundLinkOut.model_validate(_data(link))
    expected = (services.settings.public_url or "http://front.example").rstrip("/")
    assert out.payment_url == f"{expected}/pay/{out.session_id}"
    assert list(_data(link)) == list(FundLinkOut.model_fields)
    again = checkout.create_payment_link(
        services,
        call=Call.of("checkout.link", args, key=key),
        account_id=account_id,
        body=PaymentLinkRequest.model_validate(args),
        base_url="http://front.example/",
    )
    assert again.replayed and again.body == link.body

    confirm = ConfirmCheckoutRequest(session_id=out.session_id)
    with pytest.raises(BillfoldError) as unpaid:
        checkout.confirm_wallet_checkout(services, account_id=account_id, body=confirm)
    assert unpaid.value.code == ErrorCode.CHECKOUT_NOT_COMPLETED
    assert checkout.hosted_link(services, session_id="cs_unknown") is None
    page = checkout.hosted_link(services, session_id=out.session_id)
    assert page is not None and page.status == "open"
    paid = checkout.pay_hosted_link(
        services,
        session_id=out.session_id,
        number=CARD_OK,
        exp_month="12",
        exp_year=str(date.today().year + 2),
        cvc="123",
        client=f"uc-{uuid.uuid4().hex[:8]}",
    )
    assert paid.result is not None and paid.result.status == "complete"
    assert paid.retry_after is None and paid.link is not None
    assert paid.link.status == "complete"
    _fund(services, account_id, 20, None)  # a later credit does not change the answer
    confirmed = checkout.confirm_wallet_checkout(services, account_id=account_id, body=confirm)
    assert isinstance(confirmed, ConfirmedCheckoutOut)
    assert (confirmed.status, confirmed.amount, confirmed.balance) == ("complete", 15, 15)

    plan_id = _plan(services, 9)
    sub_args = {"purpose": "subscribe", "plan_id": plan_id}
    sub_link = checkout.create_payment_link(
        services,
        call=Call.of("checkout.link", sub_args),
        account_id=account_id,
        body=PaymentLinkRequest.model_validate(sub_args),
        base_url="http://front.example/",
    )
    sub_out = SubscribeLinkOut.model_validate(_data(sub_link))
    assert (sub_out.plan_id, sub_out.amount) == (plan_id, 9)
    assert sub_out.payment_url == sub_out.checkout_url == f"{expected}/pay/{sub_out.session_id}"


def test_accounts_and_tokens_without_http(services: Services) -> None:
    email = f"uc-{uuid.uuid4().hex[:12]}@example.com"
    args = {"email": email, "password": "long enough"}
    key = f"acct-{uuid.uuid4().hex}"
    created = account_usecases.create_account(
        services,
        call=Call.of("accounts.create", args, key=key),
        body=CreateAccountRequest.model_validate(args),
    )
    assert created.status_code == 201
    account_id = _data(created)["id"]
    again = account_usecases.create_account(
        services,
        call=Call.of("accounts.create", args, key=key),
        body=CreateAccountRequest.model_validate(args),
    )
    assert again.replayed and again.body == created.body
    read = account_usecases.get_account(services, account_id=account_id)
    assert isinstance(read, AccountOut)
    assert (read.email, read.status, read.test_clock_id) == (email, "active", None)

    login = LoginRequest.model_validate({**args, "expires_in": "1_week"})
    token = _data(account_usecases.login(services, body=login, client="uc-test"))
    assert token["account_id"] == account_id and token["token_type"] == "bearer"
    with services.database.read() as session:
        agent = accounts.authenticate_token(session, token["access_token"])
    revoked = account_usecases.revoke_token(
        services, call=Call(), account_id=account_id, token_id=agent.token_id
    )
    assert (revoked.status_code, _data(revoked)) == (200, {"revoked": True})
    with pytest.raises(BillfoldError) as wrong:
        account_usecases.login(
            services,
            body=LoginRequest.model_validate({**args, "password": "not it"}),
            client="uc-test",
        )
    assert wrong.value.code == ErrorCode.INVALID_CREDENTIALS

    suspended = account_usecases.suspend_account(services, call=Call(), account_id=account_id)
    assert _data(suspended)["status"] == "suspended"
    with pytest.raises(BillfoldError) as refused:
        account_usecases.login(services, body=login, client="uc-test")
    assert refused.value.code == ErrorCode.ACCOUNT_SUSPENDED
    account_usecases.reactivate_account(services, call=Call(), account_id=account_id)
    minted = account_usecases.issue_token(
        services,
        call=Call(),
        account_id=account_id,
        body=IssueTokenRequest.model_validate({"expires_in": "never"}),
    )
    assert minted.status_code == 201
    assert _data(minted)["expires_at"] is None


def test_an_account_on_a_test_clock_without_http(services: Services) -> None:
    created = testclock.create_clock(
        services, call=Call(), body=CreateTestClockRequest.model_validate({"name": "uc"})
    )
    assert created.status_code == 201
    clock_id = _data(created)["id"]
    args = {"email": f"uc-{uuid.uuid4().hex[:12]}@example.com", "password": "long enough"}
    account = account_usecases.create_account(
        services,
        call=Call(),
        body=CreateAccountRequest.model_validate({**args, "test_clock_id": clock_id}),
    )
    account_id = _data(account)["id"]
    key = f"adv-{uuid.uuid4().hex}"
    before = testclock.get_clock(services, test_clock_id=clock_id)
    assert isinstance(before, TestClockOut)
    advanced = testclock.advance(
        services,
        call=Call.of("testclock.advance", {"days": 3}, key=key),
        test_clock_id=clock_id,
        body=AdvanceRequest.model_validate({"days": 3}),
    )
    assert _data(advanced)["advanced_seconds"] == 3 * 86_400
    replay = testclock.advance(
        services,
        call=Call.of("testclock.advance", {"days": 3}, key=key),
        test_clock_id=clock_id,
        body=AdvanceRequest.model_validate({"days": 3}),
    )
    assert replay.replayed  # the clock did not move twice
    after = testclock.get_clock(services, test_clock_id=clock_id)
    moved = after.now - before.now
    assert moved.days == 3
    with on_account_clock(services, account_id):
        read = account_usecases.get_account(services, account_id=account_id)
    assert read.test_clock_id == clock_id
    with pytest.raises(BillfoldError) as gone:
        testclock.global_clock_removed()
    assert gone.value.code == ErrorCode.GONE
