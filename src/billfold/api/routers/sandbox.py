"""The sandbox's Stripe-compatible tokenization API (`{api_base}/v1/payment_methods`).

It answers like Stripe, errors included (`{"error": {"type", "code", "message",
"param"}}`), so clients written against Stripe's API work with only the base URL
changed. Card numbers are checked here and never stored or logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billfold import ratelimit
from billfold.api.deps import ServicesDep, client_address
from billfold.errors import RateLimited
from billfold.processors.cards import InvalidCard
from billfold.processors.sandbox import SandboxRequestError

router = APIRouter(prefix="/sandbox/v1", tags=["sandbox processor"], include_in_schema=True)


def _stripe_error(status: int, type_: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, **extra}}, status_code=status)


def _key_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0]
    return None


async def _authorized_form(
    request: Request, services: ServicesDep
) -> dict[str, str] | JSONResponse:
    """The form fields of a request made with the publishable key, or Stripe's error."""
    key = _key_from(request)
    if key is None or not hmac.compare_digest(
        key.encode(), services.processor.publishable_key.encode()
    ):
        return _stripe_error(
            401,
            "invalid_request_error",
            "Invalid API Key provided. Use the publishable key from /billing/stripe-config.",
        )
    try:
        return {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
    except UnicodeDecodeError:
        return _stripe_error(400, "invalid_request_error", "The body must be form-encoded.")


def _tokenization_refused(request: Request, services: ServicesDep) -> JSONResponse | None:
    """Count a card tokenization (it stores a payment method) per client address; Stripe's
    429 `rate_limit` error when over the limit."""
    settings = services.settings
    limit = ratelimit.Limit(
        f"tokenize:client:{client_address(request)}",
        settings.tokenize_max_per_client,
        settings.client_window_seconds,
    )
    try:
        with services.database.transaction() as session:
            ratelimit.take(session, [limit], message="Too many card tokenizations.")
    except RateLimited as exc:
        response = _stripe_error(
            429,
            "invalid_request_error",
            "Too many card tokenizations from this address; retry after "
            f"{exc.headers['Retry-After']} seconds.",
            code="rate_limit",
        )
        response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response
    return None


@router.post("/payment_methods", summary="Create a card PaymentMethod (Stripe-compatible)")
async def create_payment_method(request: Request, services: ServicesDep) -> JSONResponse:
    form = await _authorized_form(request, services)
    if isinstance(form, JSONResponse):
        return form
    if form.get("type") != "card":
        return _stripe_error(
            400, "invalid_request_error", "Only type=card is supported.", param="type"
        )
    for field in ("card[number]", "card[exp_month]", "card[exp_year]"):
        if not form.get(field):
            return _stripe_error(
                400, "invalid_request_error", f"Missing required param: {field}.", param=field
            )
    refused = _tokenization_refused(request, services)
    if refused is not None:
        return refused
    try:
        payment_method = services.sandbox.tokenize_card(
            number=form["card[number]"],
            exp_month=form["card[exp_month]"],
            exp_year=form["card[exp_year]"],
            cvc=form.get("card[cvc]"),
        )
    except InvalidCard as exc:
        return _stripe_error(402, "card_error", exc.message, code=exc.code, param=exc.param)
    return JSONResponse(payment_method)


@router.post(
    "/setup_intents/{setup_intent_id}/confirm",
    summary="Confirm a SetupIntent with card details (Stripe-compatible)",
)
async def confirm_setup_intent(
    setup_intent_id: str, request: Request, services: ServicesDep
) -> JSONResponse:
    form = await _authorized_form(request, services)
    if isinstance(form, JSONResponse):
        return form
    card = None
    if any(k.startswith("payment_method_data[") for k in form):
        if form.get("payment_method_data[type]", "card") != "card":
            return _stripe_error(
                400,
                "invalid_request_error",
                "Only card payment methods are supported.",
                param="payment_method_data[type]",
            )
        card = {
            field: form.get(f"payment_method_data[card][{field}]")
            for field in ("number", "exp_month", "exp_year", "cvc")
        }
    elif not form.get("payment_method"):
        return _stripe_error(
            400,
            "invalid_request_error",
            "Give payment_method_data[card][…] fields or a payment_method.",
            param="payment_method_data",
        )
    if card is not None:
        refused = _tokenization_refused(request, services)
        if refused is not None:
            return refused
    try:
        intent, error = services.sandbox.confirm_setup_intent(
            setup_intent_id,
            client_secret=form.get("client_secret"),
            card=card,
            payment_method=form.get("payment_method"),
        )
    except InvalidCard as exc:
        return _stripe_error(402, "card_error", exc.message, code=exc.code, param=exc.param)
    except SandboxRequestError as exc:
        return _stripe_error(
            exc.status, "invalid_request_error", exc.message, code=exc.code, param=exc.param
        )
    if error is not None:
        return JSONResponse({"error": {**error, "setup_intent": intent}}, status_code=402)
    return JSONResponse(intent)
