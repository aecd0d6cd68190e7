"""Operator endpoints of the sandbox test clocks (Stripe's model): create a clock, create
accounts on it (`POST /accounts` with `test_clock_id`), advance it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from billfold.api.deps import Operator, OperatorCall, ServicesDep, respond
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import testclock
from billfold.schemas import ERROR_RESPONSES, Envelope, ErrorEnvelope
from billfold.testclock.schemas import (
    AdvancedTestClockOut,
    AdvanceRequest,
    CreateTestClockRequest,
    TestClockOut,
)

router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["test clocks"],
    dependencies=[Operator],
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "test_clock_unavailable: not in test mode"},
    },
)


@router.post("/test-clocks", response_model=Envelope[TestClockOut], status_code=201)
def create_test_clock(
    body: CreateTestClockRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    """Sandbox only: a new test clock. Accounts created on it (`POST /accounts` with its
    `test_clock_id`) live on its time; everything else stays on real time."""
    return respond(testclock.create_clock(services, call=call, body=body))


@router.get("/test-clocks/{test_clock_id}", response_model=Envelope[TestClockOut])
def get_test_clock(test_clock_id: str, services: ServicesDep) -> Response:
    """A test clock and its current time."""
    return ok(testclock.get_clock(services, test_clock_id=test_clock_id))


@router.post("/test-clocks/{test_clock_id}/advance", response_model=Envelope[AdvancedTestClockOut])
def advance_test_clock(
    test_clock_id: str, body: AdvanceRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    """Sandbox only: move the clock forward and run every job of its accounts that falls
    due on the way, each at its due time (renewals, dunning retries, credit and link
    expiry). Other clocks and real-time accounts are not touched. With an
    Idempotency-Key, a retried call does not move the clock twice."""
    return respond(testclock.advance(services, call=call, test_clock_id=test_clock_id, body=body))


@router.get("/test-clock", include_in_schema=False, deprecated=True)
def global_clock_removed() -> Response:
    """Removed: 410 Gone, naming the per-account test clocks."""
    testclock.global_clock_removed()


@router.post("/test-clock/advance", include_in_schema=False, deprecated=True)
def global_advance_removed() -> Response:
    """Removed: 410 Gone, naming the per-account test clocks."""
    testclock.global_clock_removed()
