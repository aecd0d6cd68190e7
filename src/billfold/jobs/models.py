"""The durable job table: background work written in the same transaction as its cause."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import wall_now
from billfold.db import Base, partial_index


class Lane(StrEnum):
    """Which pool of worker threads runs a job. Money work (top-ups, renewals, dunning,
    recovery, expiries, housekeeping) never waits behind calls to other people's servers."""

    DEFAULT = "default"
    WEBHOOKS = "webhooks"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    account_id: Mapped[str | None] = mapped_column(String(40))
    # A job of an account on a sandbox test clock: `run_at` is on that clock's time, and
    # only the clock's advance runs it (None: real time, any worker).
    test_clock_id: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(60))
    lane: Mapped[str] = mapped_column(
        String(20), default=Lane.DEFAULT, server_default=Lane.DEFAULT.value
    )
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # queued → running → succeeded | dead (retries exhausted); running past its lease
    # (a crashed worker) is claimable again.
    status: Mapped[str] = mapped_column(String(12), default="queued")
    run_at: Mapped[datetime] = mapped_column(default=wall_now)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    locked_by: Mapped[str | None] = mapped_column(String(80))
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # At most one queued or running job per dedupe key (e.g. one top-up per wallet).
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    # Jobs sharing a concurrency key (one webhook endpoint's deliveries) run at most
    # MAX_RUNNING_PER_KEY at a time: a running one holds a numbered slot, and the unique
    # index below lets no two running jobs hold the same slot of a key.
    concurrency_key: Mapped[str | None] = mapped_column(String(100))
    slot: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=wall_now)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_jobs_due", "status", "run_at"),
        Index("ix_jobs_lane_due", "lane", "status", "run_at"),
        Index("ix_jobs_clock_due", "test_clock_id", "status", "run_at"),
        partial_index(
            "uq_jobs_running_slot",
            "concurrency_key",
            "slot",
            unique=True,
            where="status = 'running'",
        ),
        partial_index(
            "uq_jobs_active_dedupe_key",
            "dedupe_key",
            unique=True,
            where="status IN ('queued', 'running')",
        ),
    )
