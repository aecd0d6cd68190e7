"""Test clock use cases (operator, sandbox only): create a clock, read one, advance one; the
one global clock's old routes answer 410 Gone. Accounts go on a clock when they are created
(`usecases.accounts.create_account` with `test_clock_id`); `application.testclock` says
how their time flows."""

from __future__ import annotations

from typing import NoReturn

from sqlalchemy.orm import Session

from billfold.application import testclock as test_clocks
from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_operator
from billfold.errors import ErrorCode, Gone
from billfold.services import Services
from billfold.testclock.schemas import (
    AdvancedTestClockOut,
    AdvanceRequest,
    CreateTestClockRequest,
    TestClockOut,
)


def create_clock(app: Services, *, call: Call, body: CreateTestClockRequest) -> Reply:
    """A new test clock. Accounts created on it live on its time; everything else stays
    on real time."""

    def handler(session: Session) -> Outcome:
        view = test_clocks.create_clock(app, session, name=body.name, frozen_time=body.frozen_time)
        return 201, TestClockOut.model_validate(view)

    return for_operator(app, call).atomic(handler)


def get_clock(app: Services, *, test_clock_id: str) -> TestClockOut:
    """A test clock and its current time."""
    return TestClockOut.model_validate(test_clocks.get_clock(app, test_clock_id))


def advance(app: Services, *, call: Call, test_clock_id: str, body: AdvanceRequest) -> Reply:
    """Move the clock forward and run every job of its accounts that falls due on the way,
    each at its due time. With a key, a retried call does not move the clock twice."""

    def handler() -> Outcome:
        view = test_clocks.advance(app, test_clock_id, body.delta())
        return 200, AdvancedTestClockOut.model_validate(view)

    return for_operator(app, call).phased(handler)


def global_clock_removed() -> NoReturn:
    """The one global test clock (`/test-clock`, `/test-clock/advance`) is gone: 410,
    naming the per-account test clocks."""
    raise Gone(
        "The one global test clock was replaced by per-account test clocks: create one "
        "with POST /api/admin/v1/test-clocks, create accounts on it (test_clock_id), and "
        "advance it with POST /api/admin/v1/test-clocks/{id}/advance.",
        code=ErrorCode.GONE,
    )
