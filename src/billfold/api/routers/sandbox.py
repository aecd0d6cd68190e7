"""The sandbox's Stripe-compatible tokenization API (`{api_base}/v1/payment_methods`).

It answers like Stripe, errors included (`{"error": {"type", "code", "message",
"param"}}`), so clients written against Stripe's API work with only the base URL
changed. The routes check the publishable key and parse the form; the use cases
(`application/usecases/sandbox.py`) do the rest.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billfold.api.deps import ServicesDep, client_address
from billfold.application.usecases import sandbox
from billfold.application.usecases.sandbox import (
    StripeError,
    StripeErrorEnvelope,
    StripePaymentMethodOut,
    StripeSetupIntentOut,
)

router = APIRouter(prefix="/sandbox/v1", tags=["sandbox processor"], include_in_schema=True)

STRIPE_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": StripeErrorEnvelope, "description": description}
    for status, description in {
        400: "invalid_request_error: a missing or invalid parameter",
        401: "The publishable key is missing or wrong",
        402: "card_error: the card is invalid or was refused",
        404: "No such object",
        429: "rate_limit: too many card tokenizations from this address",
    }.items()
}


def _stripe_error(exc: StripeError) -> JSONResponse:
    response = JSONResponse(exc.body, status_code=exc.status)
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


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


async def _authorized_form(request: Request, services: ServicesDep) -> dict[str, str]:
    """The form fields of a request made with the publishable key; StripeError if not."""
    key = _key_from(request)
    if key is None or not hmac.compare_digest(
        key.encode(), services.processor.publishable_key.encode()
    ):
        raise StripeError.of(
            401,
            "invalid_request_error",
            "Invalid API Key provided. Use the publishable key from /billing/stripe-config.",
        )
    try:
        return {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
    except UnicodeDecodeError:
        raise StripeError.of(
            400, "invalid_request_error", "The body must be form-encoded."
        ) from None


@router.post(
    "/payment_methods",
    summary="Create a card PaymentMethod (Stripe-compatible)",
    response_model=StripePaymentMethodOut,
    responses=STRIPE_ERRORS,
)
async def create_payment_method(request: Request, services: ServicesDep) -> JSONResponse:
    try:
        form = await _authorized_form(request, services)
        payment_method = sandbox.create_payment_method(
            services, form=form, client=client_address(request)
        )
    except StripeError as exc:
        return _stripe_error(exc)
    return JSONResponse(payment_method.model_dump())


@router.post(
    "/setup_intents/{setup_intent_id}/confirm",
    summary="Confirm a SetupIntent with card details (Stripe-compatible)",
    response_model=StripeSetupIntentOut,
    responses=STRIPE_ERRORS,
)
async def confirm_setup_intent(
    setup_intent_id: str, request: Request, services: ServicesDep
) -> JSONResponse:
    try:
        form = await _authorized_form(request, services)
        intent = sandbox.confirm_setup_intent(
            services, setup_intent_id=setup_intent_id, form=form, client=client_address(request)
        )
    except StripeError as exc:
        return _stripe_error(exc)
    return JSONResponse(intent.model_dump())
