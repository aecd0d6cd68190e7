"""Operator endpoints of the sandbox test clocks (Stripe's model): create a clock, create
accounts on it (`POST /accounts` with `test_clock_id`), advance it."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from sqlalchemy.orm import Session

from billfold.api.deps import Operator, OperatorIdempotent, Outcome, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application import testclock as test_clocks
from billfold.errors import ErrorCode, Gone
from billfold.schemas import ERROR_RESPONSES, Envelope, ErrorEnvelope, RequestModel
from billfold.text import CleanText

router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["test clocks"],
    dependencies=[Operator],
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "test_clock_unavailable: not in sandbox mode"},
    },
)

MAX_DAYS = 3660


class CreateTestClockRequest(RequestModel):
    name: CleanText = Field(default="Test clock", min_length=1, max_length=200)
    frozen_time: AwareDatetime | None = Field(
        default=None,
        description="Where the clock starts (now if left out); it runs on from there at "
        "real speed, and jumps forward when advanced. At most 100 years from now.",
    )


class AdvanceRequest(RequestModel):
    """How far to move the clock: any of days, hours, seconds (summed), up to 10 years."""

    days: int | None = Field(default=None, ge=0, le=MAX_DAYS)
    hours: int | None = Field(default=None, ge=0, le=MAX_DAYS * 24)
    seconds: int | None = Field(default=None, ge=0, le=MAX_DAYS * 86_400)

    @model_validator(mode="after")
    def _some_time(self) -> AdvanceRequest:
        total = self.delta()
        if total <= timedelta(0):
            raise ValueError("give days, hours or seconds: a positive amount of time")
        if total > timedelta(days=MAX_DAYS):
            raise ValueError(f"advance at most {MAX_DAYS} days at a time")
        return self

    def delta(self) -> timedelta:
        return timedelta(days=self.days or 0, hours=self.hours or 0, seconds=self.seconds or 0)


class TestClockOut(BaseModel):
    __test__ = False  # not a pytest class

    id: str
    name: str
    now: datetime = Field(description="The clock's time: what its accounts live on.")
    created_at: datetime


class AdvancedTestClockOut(TestClockOut):
    advanced_seconds: int
    jobs_run: int = Field(description="Jobs of the clock's accounts run on the way.")


@router.post("/test-clocks", response_model=Envelope[TestClockOut], status_code=201)
def create_test_clock(
    body: CreateTestClockRequest, services: ServicesDep, idem: OperatorIdempotent
) -> Response:
    """Sandbox only: a new test clock. Accounts created on it (`POST /accounts` with its
    `test_clock_id`) live on its time; everything else stays on real time."""

    def handler(session: Session) -> Outcome:
        return 201, test_clocks.create_clock(
            services, session, name=body.name, frozen_time=body.frozen_time
        )

    return idem.atomic(handler)


@router.get("/test-clocks/{test_clock_id}", response_model=Envelope[TestClockOut])
def get_test_clock(test_clock_id: str, services: ServicesDep) -> Response:
    """A test clock and its current time."""
    return ok(test_clocks.get_clock(services, test_clock_id))


@router.post("/test-clocks/{test_clock_id}/advance", response_model=Envelope[AdvancedTestClockOut])
def advance_test_clock(
    test_clock_id: str, body: AdvanceRequest, services: ServicesDep, idem: OperatorIdempotent
) -> Response:
    """Sandbox only: move the clock forward and run every job of its accounts that falls
    due on the way, each at its due time (renewals, dunning retries, credit and link
    expiry). Other clocks and real-time accounts are not touched. With an
    Idempotency-Key, a retried call does not move the clock twice."""

    def handler() -> Outcome:
        return 200, test_clocks.advance(services, test_clock_id, body.delta())

    return idem.phased(handler)


def _replaced() -> Gone:
    return Gone(
        "The one global test clock was replaced by per-account test clocks: create one "
        "with POST /api/admin/v1/test-clocks, create accounts on it (test_clock_id), and "
        "advance it with POST /api/admin/v1/test-clocks/{id}/advance.",
        code=ErrorCode.GONE,
    )


@router.get("/test-clock", include_in_schema=False, deprecated=True)
def global_clock_removed() -> Response:
    """Removed: 410 Gone, naming the per-account test clocks."""
    raise _replaced()


@router.post("/test-clock/advance", include_in_schema=False, deprecated=True)
def global_advance_removed() -> Response:
    """Removed: 410 Gone, naming the per-account test clocks."""
    raise _replaced()
