"""Request and response shapes of the sandbox test clocks."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import AwareDatetime, Field, model_validator

from billfold.schemas import RequestModel, ResponseModel
from billfold.text import CleanText

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


class TestClockOut(ResponseModel):
    __test__ = False  # not a pytest class

    id: str
    name: str
    now: datetime = Field(description="The clock's time: what its accounts live on.")
    created_at: datetime


class AdvancedTestClockOut(TestClockOut):
    advanced_seconds: int
    jobs_run: int = Field(description="Jobs of the clock's accounts run on the way.")
