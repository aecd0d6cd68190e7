"""Stripe's webhooks: `POST /webhooks/stripe`, signed with the endpoint's secret
(`BILLFOLD_STRIPE_WEBHOOK_SECRET`); the use case (`application/processor_events.py`) verifies
and processes each event once."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from billfold.api.deps import ServicesDep
from billfold.api.responses import ok
from billfold.application.processor_events import ReceivedEventOut, receive_stripe_event
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(tags=["processor webhooks"], responses=ERROR_RESPONSES)


@router.post("/webhooks/stripe", response_model=Envelope[ReceivedEventOut])
async def stripe_webhook(request: Request, services: ServicesDep) -> Response:
    """A Stripe event: 200 once processed (or seen before), 400 for a bad signature."""
    payload = await request.body()
    signature = request.headers.get("stripe-signature")
    received = await run_in_threadpool(
        receive_stripe_event, services, payload=payload, signature=signature
    )
    return ok(received)
