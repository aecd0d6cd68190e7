"""The FastAPI application: wires routers, errors, request ids and services together."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold import __version__, tracing
from billfold.api.errors import error_body, install_error_handlers
from billfold.api.fastpath import UsageFastPath
from billfold.api.metrics import RequestMetrics
from billfold.api.metrics import router as metrics_router
from billfold.api.pages import STATIC_DIR as CHECKOUT_STATIC
from billfold.api.pages import router as checkout_pages
from billfold.api.responses import ApiResponse
from billfold.api.routers.accounts import admin_router as accounts_admin_router
from billfold.api.routers.accounts import agent_router as auth_router
from billfold.api.routers.billing import router as billing_router
from billfold.api.routers.checkout import router as checkout_router
from billfold.api.routers.coupons import admin_router as coupons_admin_router
from billfold.api.routers.coupons import router as coupons_router
from billfold.api.routers.invoices import admin_router as invoices_admin_router
from billfold.api.routers.invoices import files_router as invoice_files_router
from billfold.api.routers.invoices import router as invoices_router
from billfold.api.routers.operator_keys import router as operator_keys_router
from billfold.api.routers.payment_attempts import admin_router as payment_attempts_admin_router
from billfold.api.routers.payments import router as payments_router
from billfold.api.routers.sandbox import router as sandbox_router
from billfold.api.routers.stripe_webhooks import router as stripe_webhooks_router
from billfold.api.routers.subscriptions import admin_router as subscriptions_admin_router
from billfold.api.routers.subscriptions import router as subscriptions_router
from billfold.api.routers.testclock import router as testclock_router
from billfold.api.routers.wallet import admin_router as usage_admin_router
from billfold.api.routers.wallet import router as wallet_router
from billfold.api.routers.webhooks import router as webhooks_admin_router
from billfold.errors import ErrorCode
from billfold.ids import new_id
from billfold.mcp.http import agents_mcp_route
from billfold.services import Services

__all__ = ["create_app"]

log = logging.getLogger("billfold")

AGENT_PREFIX = "/api/agents/v1"
ADMIN_PREFIX = "/api/admin/v1"
MAX_BODY_BYTES = 1_000_000

# On every response unless it sets its own: no sniffing, no framing, no referrer. JSON and
# files need no content policy beyond refusing everything; the hosted pages send a stricter
# one of their own (checkout/pages.py). FastAPI's API docs load Swagger UI / ReDoc from a
# CDN with inline bootstrap code, so they keep only the restrictions they can live with.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = "frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'"
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
# The same, as ASGI header pairs (encoded once, not on every response).
_SECURITY_PAIRS = tuple((name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items())
_CSP = b"content-security-policy"
_DEFAULT_CSP, _DOCS_CSP = DEFAULT_CSP.encode(), DOCS_CSP.encode()


# Query parameters that make a URL work without a token (the signed invoice PDF link).
SIGNED_LINK_PARAMS = frozenset({"signature"})


class RedactSignedLinks(logging.Filter):
    """Access log lines keep the path of a signed link but not its query string: anyone who
    reads the log could open the link for as long as it is valid."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access line: (client, method, path?query, http version, status)
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, _, query = args[2].partition("?")
            if not query:  # the usual line: nothing to parse
                return True
            names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
            if names & SIGNED_LINK_PARAMS:
                record.args = (*args[:2], f"{path}?[redacted]", *args[3:])
        return True


def redact_signed_links_in_access_log() -> None:
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSignedLinks) for f in access_log.filters):
        access_log.addFilter(RedactSignedLinks())


class BodyTooLarge(StarletteHTTPException):
    """The body streamed past MAX_BODY_BYTES; raised from `receive`, so nothing parses it.

    An HTTPException, so FastAPI's body reader lets it through to the envelope handler
    instead of calling it a parse error.
    """

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="The request body is too large.")


class RequestContext:
    """Pure ASGI middleware: a request id and the security headers on every response; the
    body size cap, enforced on the bytes as they arrive (chunked bodies have no length)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req", 20)
        scope.setdefault("state", {})["request_id"] = request_id
        if "\x00" in scope.get("path", "") or b"\x00" in unquote_to_bytes(
            scope.get("query_string", b"")
        ):
            response = ApiResponse(
                error_body(
                    ErrorCode.INVALID_REQUEST,
                    "The URL must not contain NUL characters.",
                    {"field": "url"},
                    request_id,
                ),
                status_code=422,
            )
            await response(scope, receive, self._sender(scope, send, request_id, False))
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await self._too_large(scope, receive, send, request_id)
                return

        received = 0
        over_cap = False
        started = False

        async def receive_capped() -> Message:
            nonlocal received, over_cap
            if over_cap:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    over_cap = True
                    raise BodyTooLarge
            return message

        inner_send = self._sender(scope, send, request_id, False)

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if over_cap:
                    # The rest of the body is still on the wire: do not keep reading it.
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await inner_send(message)

        try:
            await self.app(scope, receive_capped, send_tracked)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send, request_id)

    @staticmethod
    def _sender(scope: Scope, send: Send, request_id: str, close: bool) -> Send:
        path = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                message["headers"] = headers
                present = {bytes(name).lower() for name, _ in headers}
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(pair for pair in _SECURITY_PAIRS if pair[0] not in present)
                if _CSP not in present:
                    headers.append((_CSP, _DOCS_CSP if path in DOCS_PATHS else _DEFAULT_CSP))
                if close:
                    headers.append((b"connection", b"close"))
            await send(message)

        return send_with_headers

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        response = ApiResponse(
            error_body(
                ErrorCode.PAYLOAD_TOO_LARGE, "The request body is too large.", {}, request_id
            ),
            status_code=413,
        )
        await response(scope, receive, self._sender(scope, send, request_id, True))


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="Billfold",
        version=__version__,
        description="Billing, wallet and subscription control plane for AI-agent platforms.",
        default_response_class=ApiResponse,
    )
    app.state.services = services
    install_error_handlers(app)
    redact_signed_links_in_access_log()
    if services.settings.usage_fast_path:
        # Inside RequestContext: the fast lane's answers get the request id and headers.
        app.add_middleware(UsageFastPath, services=services)
    app.add_middleware(RequestContext)
    # Added last, so outermost: its latency includes RequestContext's work.
    app.add_middleware(RequestMetrics, log_requests=services.settings.log_format == "json")
    traces = tracing.provider()
    if traces is not None:  # a span per request, named by its route template
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=traces, server_request_hook=tracing.redact_span_urls
        )

    health = APIRouter(tags=["health"])

    @health.get("/healthz")
    def healthz() -> dict[str, Any]:
        """The process is alive."""
        return {"status": "ok"}

    @health.get("/readyz")
    def readyz() -> Response:
        """The database answers."""
        try:
            with services.database.read() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
            retry_after = str(services.settings.retry_after_seconds)
            return ApiResponse(
                {"status": "unavailable"}, status_code=503, headers={"Retry-After": retry_after}
            )
        return ApiResponse({"status": "ok"})

    app.include_router(health)
    app.include_router(metrics_router)
    app.include_router(auth_router, prefix=AGENT_PREFIX)
    app.include_router(payments_router, prefix=AGENT_PREFIX)
    app.include_router(wallet_router, prefix=AGENT_PREFIX)
    app.include_router(billing_router, prefix=AGENT_PREFIX)
    app.include_router(checkout_router, prefix=AGENT_PREFIX)
    app.include_router(coupons_router, prefix=AGENT_PREFIX)
    app.include_router(invoices_router, prefix=AGENT_PREFIX)
    app.include_router(subscriptions_router, prefix=AGENT_PREFIX)
    app.include_router(accounts_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(usage_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(coupons_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(invoices_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(payment_attempts_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(webhooks_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(operator_keys_router, prefix=ADMIN_PREFIX)
    app.include_router(subscriptions_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(testclock_router, prefix=ADMIN_PREFIX)
    app.include_router(sandbox_router)
    app.include_router(stripe_webhooks_router)
    app.include_router(checkout_pages)
    app.mount("/checkout/static", StaticFiles(directory=CHECKOUT_STATIC), name="checkout-static")
    app.include_router(invoice_files_router)
    # MCP (Streamable HTTP) for agents: its tools call this app's agent API in-process.
    app.router.routes.append(agents_mcp_route(app, services))
    return app
