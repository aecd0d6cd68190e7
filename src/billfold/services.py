"""What every use case runs with: settings, the database and the payment processor.

A core module: it knows no domain. The application layer builds one (`billfold.application`)
and every front end (HTTP, MCP, CLI) and every job hands it to use cases as their first
argument, so a use case never needs FastAPI to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from billfold.config import Settings
from billfold.db import Database
from billfold.errors import ErrorCode, Forbidden
from billfold.idempotency import service as idempotency
from billfold.processors.base import Processor
from billfold.processors.sandbox import SandboxProcessor


@dataclass
class Services:
    settings: Settings
    database: Database
    processor: Processor
    admin_key_hash: str
    # The admin key before the current one, valid during a rotation (None: no rotation).
    previous_admin_key_hash: str | None = None
    # Which test clock each account seen lives on (None: real time), fixed at the
    # account's creation; remembered per process (`application.testclock.account_clock`).
    account_clock_ids: dict[str, str | None] = field(default_factory=dict, repr=False)

    @property
    def key_policy(self) -> idempotency.KeyPolicy:
        return idempotency.KeyPolicy(
            ttl=timedelta(hours=self.settings.idempotency_ttl_hours),
            lock_timeout=timedelta(seconds=self.settings.idempotency_lock_timeout_seconds),
        )

    @property
    def sandbox(self) -> SandboxProcessor:
        """The sandbox processor, for what only it offers (card tokenization, the hosted
        test page's card form, test clocks); refused with 403 on a real processor."""
        if not isinstance(self.processor, SandboxProcessor):
            raise Forbidden(
                "This only works with the sandbox processor.",
                code=ErrorCode.SANDBOX_ONLY,
            )
        return self.processor
