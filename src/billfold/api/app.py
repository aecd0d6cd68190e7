"""The FastAPI application: wires routers, errors, request ids and services together."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold import __version__
from billfold.accounts.router import admin_router as accounts_admin_router
from billfold.accounts.router import agent_router as auth_router
from billfold.api.deps import Services
from billfold.api.errors import error_body, install_error_handlers
from billfold.api.responses import ApiResponse
from billfold.billing.router import router as billing_router
from billfold.checkout.pages import router as checkout_pages
from billfold.checkout.router import router as checkout_router
from billfold.config import Settings
from billfold.coupons.router import admin_router as coupons_admin_router
from billfold.coupons.router import router as coupons_router
from billfold.db import Database
from billfold.ids import new_id
from billfold.invoices.router import admin_router as invoices_admin_router
from billfold.invoices.router import files_router as invoice_files_router
from billfold.invoices.router import router as invoices_router
from billfold.payments.router import router as payments_router
from billfold.processors.sandbox import SandboxProcessor
from billfold.processors.sandbox_router import router as sandbox_router
from billfold.security import hash_secret
from billfold.subscriptions import dunning
from billfold.subscriptions.router import admin_router as subscriptions_admin_router
from billfold.subscriptions.router import router as subscriptions_router
from billfold.testclock import service as testclock
from billfold.testclock.router import router as testclock_router
from billfold.wallet.router import admin_router as usage_admin_router
from billfold.wallet.router import router as wallet_router
from billfold.webhooks.router import router as webhooks_admin_router

log = logging.getLogger("billfold")

AGENT_PREFIX = "/api/agents/v1"
ADMIN_PREFIX = "/api/admin/v1"
MAX_BODY_BYTES = 1_000_000


class RequestContext:
    """Pure ASGI middleware: a request id on every request and response; a body size cap."""

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
                    "invalid_request",
                    "The URL must not contain NUL characters.",
                    {"field": "url"},
                    request_id,
                ),
                status_code=422,
                headers={"X-Request-Id": request_id},
            )
            await response(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                response = ApiResponse(
                    error_body(
                        "payload_too_large", "The request body is too large.", {}, request_id
                    ),
                    status_code=413,
                    headers={"X-Request-Id": request_id},
                )
                await response(scope, receive, send)
                return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


def build_services(settings: Settings, admin_key: str) -> Services:
    database = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    processor = SandboxProcessor(database, publishable_key=settings.sandbox_publishable_key)
    if settings.processor == "sandbox":
        testclock.load(database)
    dunning.configure(
        dunning.DunningPolicy(
            retry_days=tuple(settings.dunning_retry_days),
            final_status=settings.dunning_final_status,
        )
    )
    return Services(
        settings=settings,
        database=database,
        processor=processor,
        admin_key_hash=hash_secret(admin_key),
    )


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="Billfold",
        version=__version__,
        description="Billing, wallet and subscription control plane for AI-agent platforms.",
        default_response_class=ApiResponse,
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(RequestContext)

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
        except Exception:
            log.exception("readiness check failed")
            return ApiResponse({"status": "unavailable"}, status_code=503)
        return ApiResponse({"status": "ok"})

    app.include_router(health)
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
    app.include_router(webhooks_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(subscriptions_admin_router, prefix=ADMIN_PREFIX)
    app.include_router(testclock_router, prefix=ADMIN_PREFIX)
    app.include_router(sandbox_router)
    app.include_router(checkout_pages)
    app.include_router(invoice_files_router)
    return app
