"""Operator endpoints of the sandbox test clock."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from billfold.api.deps import Operator, OperatorIdempotent, Outcome, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application import testclock as test_clock
from billfold.schemas import ERROR_RESPONSES, Envelope, RequestModel
from billfold.testclock import service

router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["test clock"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)

MAX_DAYS = 3660


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


class ClockOut(BaseModel):
    now: datetime
    offset_seconds: int
    advanced_seconds: int | None = None
    jobs_run: int | None = None


@router.get("/test-clock", response_model=Envelope[ClockOut])
def get_clock(services: ServicesDep) -> Response:
    """The service's current time and how far the test clock has moved it."""
    service.sync(services.database)
    return ok(service.state())


@router.post("/test-clock/advance", response_model=Envelope[ClockOut])
def advance_clock(
    body: AdvanceRequest, services: ServicesDep, idem: OperatorIdempotent
) -> Response:
    """Sandbox only: move time forward and run every job that falls due on the way
    (renewals, dunning retries, credit and link expiry, webhook deliveries). With an
    Idempotency-Key, a retried call does not move the clock twice."""

    def handler() -> Outcome:
        return 200, test_clock.advance(services, body.delta())

    return idem.phased(handler)
