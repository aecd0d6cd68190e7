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

from billfold.api.deps import ServicesDep
from billfold.processors.cards import InvalidCard

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


@router.post("/payment_methods", summary="Create a card PaymentMethod (Stripe-compatible)")
async def create_payment_method(request: Request, services: ServicesDep) -> JSONResponse:
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
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
    except UnicodeDecodeError:
        return _stripe_error(400, "invalid_request_error", "The body must be form-encoded.")
    if form.get("type") != "card":
        return _stripe_error(
            400, "invalid_request_error", "Only type=card is supported.", param="type"
        )
    for field in ("card[number]", "card[exp_month]", "card[exp_year]"):
        if not form.get(field):
            return _stripe_error(
                400, "invalid_request_error", f"Missing required param: {field}.", param=field
            )
    try:
        payment_method = services.processor.tokenize_card(
            number=form["card[number]"],
            exp_month=form["card[exp_month]"],
            exp_year=form["card[exp_year]"],
            cvc=form.get("card[cvc]"),
        )
    except InvalidCard as exc:
        return _stripe_error(402, "card_error", exc.message, code=exc.code, param=exc.param)
    return JSONResponse(payment_method)
