"""Operator endpoint of the payment attempts: every card charge as the payment-attempt
machine recorded it, e.g. those whose outcome the processor could not tell (`unknown`)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from billfold.api.deps import Operator, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import payments
from billfold.payments.models import AttemptState
from billfold.payments.schemas import PaymentAttemptList
from billfold.schemas import ERROR_RESPONSES, Envelope

admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["payments"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)


@admin_router.get("/payment-attempts", response_model=Envelope[PaymentAttemptList])
def list_payment_attempts(
    services: ServicesDep,
    state: AttemptState | None = Query(default=None),
    account_id: str | None = Query(default=None, min_length=1, max_length=40),
    limit: int = Query(default=50, ge=1, le=200),
) -> Response:
    """Card charges, newest first. `state=unknown`: the processor could not tell whether it
    charged; nothing is credited until the janitor (or a processor webhook) settles it."""
    return ok(payments.payment_attempts(services, state=state, account_id=account_id, limit=limit))
