"""Prometheus metrics: request latency by route, usage charges and refusals, job backlog.

Requests are measured by a pure ASGI middleware (it sits on every request): the route's
path template (`/api/agents/v1/subscriptions/{subscription_id}`, never the raw path, so
the label set stays bounded), the method and the status. Refusals are counted by their
error code, read from the start of the error envelope (`{"error": {"code": "…"`), which
covers both ways an error leaves: raised to the error handlers, or a stored idempotent
reply. A usage charge is counted once per request that ran it (a replay is no new one).

The job queue is read at scrape time, one aggregate query (`jobs.service.backlog`), so
every API process reports the same database truth.

Processes: `billfold serve --workers N` sets PROMETHEUS_MULTIPROC_DIR to a fresh
directory before it starts the API processes, each writes its samples there, and a
scrape (whichever process answers it) adds them up with `MultiProcessCollector`. Without
that variable the process's default registry is served. Dead processes need no
`mark_process_dead`: there are no live gauges, and a dead process's counts still count.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from time import perf_counter
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold.application.overview import attention
from billfold.application.usecases import operator_keys
from billfold.clock import wall_now
from billfold.db import Database
from billfold.errors import ErrorCode, Unauthenticated
from billfold.jobs import service as jobs
from billfold.operator_keys.service import ADMIN
from billfold.services import Services

__all__ = ["RequestMetrics", "router"]

log = logging.getLogger("billfold.metrics")

UNMATCHED = "<unmatched>"  # no route: one label for every unknown path
# A usage charge is made by these (method, route template): a charge, a hold's capture.
USAGE_CHARGE_ROUTES = frozenset(
    {
        ("POST", "/api/admin/v1/usage-charges"),
        ("POST", "/api/admin/v1/usage-holds/{hold_id}/capture"),
    }
)
_ERROR_CODE = re.compile(rb'\{"error": \{"code": "([a-z0-9_]{1,64})"')
_KNOWN_CODES = frozenset(code.value for code in ErrorCode)

REQUEST_SECONDS = Histogram(
    "billfold_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
USAGE_CHARGES = Counter(
    "billfold_usage_charges",
    "Usage charge requests (charges and hold captures) by outcome: charged, or the "
    "refusal's error code (insufficient_funds, …). Idempotent replays are not counted.",
    ["outcome"],
)
REFUSALS = Counter(
    "billfold_refusals",
    "Requests refused with a 4xx error envelope, by error code and route template.",
    ["code", "route"],
)


def route_template(scope: Scope, root_path: str = "") -> str:
    """The matched route's path template, a mount's prefix + `/{path}`, or UNMATCHED.

    FastAPI (0.16x) keeps included routers as they are, so `scope["route"]` is the route as
    its router declared it (no prefix); the full template is on the selected route context
    it records in the scope. Older FastAPI copies routes with their prefixes instead. A
    plain Starlette route (the MCP endpoint) leaves only its endpoint in the scope."""
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None) or getattr(
        scope.get("route"), "path_format", None
    )
    if isinstance(template, str) and template:
        return template
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return UNMATCHED
    mounted = scope.get("root_path", "")
    if isinstance(mounted, str) and mounted != root_path:
        return mounted.removeprefix(root_path) + "/{path}"
    for route in getattr(scope.get("router"), "routes", ()):
        if isinstance(route, Route) and route.endpoint is endpoint:
            return route.path_format
    return UNMATCHED


def error_code_of(body: bytes) -> str:
    found = _ERROR_CODE.match(body)
    if found is None:
        return "unknown"
    code = found.group(1).decode()
    return code if code in _KNOWN_CODES else "unknown"


class RequestMetrics:
    """Pure ASGI middleware: one histogram sample per HTTP request, and the counters of
    refusals and usage charges. The outermost middleware, so it times everything."""

    def __init__(self, app: ASGIApp, *, log_requests: bool = False) -> None:
        self.app = app
        self.log_requests = log_requests  # one log line per request (BILLFOLD_LOG_FORMAT=json)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        root_path = scope.get("root_path", "")
        status = 500  # unless a response starts: an exception escaped
        replayed = False
        code = "unknown"
        envelope_pending = False  # an error status: its body's first bytes name the code

        async def send_measured(message: Message) -> None:
            nonlocal status, replayed, code, envelope_pending
            if message["type"] == "http.response.start":
                status = message["status"]
                envelope_pending = status >= 400
                headers = message.get("headers", [])
                replayed = any(name.lower() == b"idempotency-replayed" for name, _ in headers)
            elif envelope_pending and message["type"] == "http.response.body":
                envelope_pending = False
                code = error_code_of(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            route = route_template(scope, root_path)
            seconds = perf_counter() - started
            self._record(scope, route, status, code, replayed, seconds)
            if self.log_requests:
                _log_request(scope, route, status, code, replayed, seconds)

    @staticmethod
    def _record(
        scope: Scope, route: str, status: int, code: str, replayed: bool, seconds: float
    ) -> None:
        method = scope.get("method", "")
        REQUEST_SECONDS.labels(method, route, str(status)).observe(seconds)
        refused = 400 <= status < 500
        if refused:
            REFUSALS.labels(code, route).inc()
        if (method, route) in USAGE_CHARGE_ROUTES and not replayed and (refused or status < 300):
            USAGE_CHARGES.labels(code if refused else "charged").inc()


_requests_log = logging.getLogger("billfold.request")


def _log_request(
    scope: Scope, route: str, status: int, code: str, replayed: bool, seconds: float
) -> None:
    """The request's line: who, what, how it ended, how long it took."""
    state = scope.get("state") or {}
    method = scope.get("method", "")
    _requests_log.info(
        "%s %s %s",
        method,
        route,
        status,
        extra={
            "request_id": state.get("request_id"),
            "account_id": state.get("account_id"),
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "replayed": replayed,
            "error_code": code if status >= 400 else None,
        },
    )


class JobBacklogCollector(Collector):
    """The job queue's backlog per lane, queried when scraped."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "billfold_jobs_due",
                "Real-time jobs due and waiting for a worker, by lane.",
                labels=["lane"],
            ),
            GaugeMetricFamily(
                "billfold_jobs_running", "Jobs held by a worker now, by lane.", labels=["lane"]
            ),
            GaugeMetricFamily(
                "billfold_jobs_oldest_due_age_seconds",
                "How long the longest-waiting due job has been due, by lane (0: none waits).",
                labels=["lane"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        try:
            with self.database.read() as session:
                backlog = jobs.backlog(session)
        except Exception:
            log.exception("the job backlog could not be read for /metrics")
            return iter(())
        due, running, age = self._families()
        current = wall_now()
        for lane, lane_backlog in backlog.items():
            due.add_metric([lane.value], lane_backlog.due)
            running.add_metric([lane.value], lane_backlog.running)
            oldest = lane_backlog.oldest_due_at
            waited = (current - oldest).total_seconds() if oldest is not None else 0.0
            age.add_metric([lane.value], max(waited, 0.0))
        return iter((due, running, age))


class AttentionCollector(Collector):
    """What alerts watch (`application.overview.attention`), counted when scraped."""

    HELP = {
        "payment_attempts_pending": "Card charges recorded but not yet answered.",
        "payment_attempts_unknown": "Card charges whose outcome the processor has not told.",
        "webhook_endpoints_disabled": "Webhook endpoints disabled after failing deliveries.",
        "subscriptions_past_due": "Subscriptions in dunning (a renewal payment failed).",
        "subscriptions_unpaid": "Subscriptions left unpaid after their last retry.",
    }

    def __init__(self, database: Database) -> None:
        self.database = database

    def describe(self) -> Iterator[Metric]:
        return iter(GaugeMetricFamily(f"billfold_{n}", h) for n, h in self.HELP.items())

    def collect(self) -> Iterator[Metric]:
        try:
            with self.database.read() as session:
                counts = attention(session)
        except Exception:
            log.exception("the attention counts could not be read for /metrics")
            return iter(())
        return iter(
            GaugeMetricFamily(f"billfold_{name}", self.HELP[name], value=counts[name])
            for name in self.HELP
        )


def exposition(services: Services) -> bytes:
    """Every metric in the text format: this process's (or, under multiprocess mode,
    every API process's) plus the job backlog."""
    backlog = CollectorRegistry()
    backlog.register(JobBacklogCollector(services.database))
    backlog.register(AttentionCollector(services.database))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes = CollectorRegistry()
        MultiProcessCollector(processes)
        return generate_latest(processes) + generate_latest(backlog)
    return generate_latest(REGISTRY) + generate_latest(backlog)


_bearer = HTTPBearer(auto_error=False, description="Operator admin key")
router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
def metrics(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    """Prometheus metrics; the admin key as Bearer unless BILLFOLD_METRICS_PUBLIC=true."""
    services: Services = request.app.state.services
    if not services.settings.metrics_public:
        given = credentials.credentials if credentials is not None else ""
        if credentials is None or credentials.scheme.lower() != "bearer" or not given:
            raise Unauthenticated(
                "Send the admin key as 'Authorization: Bearer <key>' (or set "
                "BILLFOLD_METRICS_PUBLIC=true).",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scopes = operator_keys.authorize(services, given)
        if scopes is None or not operator_keys.allows(scopes, ADMIN):
            raise Unauthenticated("Invalid admin key.", headers={"WWW-Authenticate": "Bearer"})
    return Response(exposition(services), media_type=CONTENT_TYPE_LATEST)
