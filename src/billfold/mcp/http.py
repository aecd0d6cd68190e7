"""MCP over Streamable HTTP, mounted in the API app at `/mcp/agents`.

Authentication: every HTTP request carries the agent's token (`Authorization: Bearer`,
or `X-Agent-Token`). It is checked before any MCP processing; a missing or refused token
is answered 401 in the API's error envelope. Each tool action then calls the agent API
in-process (httpx.ASGITransport into the same app) with that request's token, so the MCP
endpoint can do exactly what the token can do over HTTP, and nothing more.

Session manager: stateless mode (each POST is served by a fresh transport, no session
state between requests, so any worker can answer any request and no session can be
used with another request's token). The SDK's manager needs a running task group; the
app may be served without a lifespan (the tests' uvicorn runs `lifespan="off"`, and a
mounted app's lifespan never runs anyway), so the manager is started lazily, on the first
request, in a task of its own on the serving event loop, which holds it open until the
loop shuts down (one manager per event loop).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any

import anyio.to_thread
import httpx
from mcp.server import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from billfold.accounts.service import authenticate_token
from billfold.errors import ErrorCode, Unauthenticated
from billfold.mcp.caller import ApiCaller, ApiError
from billfold.mcp.server import build_server
from billfold.services import Services

__all__ = ["MCP_AGENTS_PATH", "AgentsMcpEndpoint", "agents_mcp_route"]

MCP_AGENTS_PATH = "/mcp/agents"

# The caller of the HTTP request being served. Stateless mode serves each request in a
# task started from the request's own task, so the value set there is the one its tool
# calls see.
_request_caller: contextvars.ContextVar[ApiCaller | None] = contextvars.ContextVar(
    "billfold_mcp_request_caller", default=None
)


def agent_token(headers: Headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    token = headers.get("x-agent-token", "").strip()
    return token or None


class AgentsMcpEndpoint:
    """The ASGI app at /mcp/agents. `api` is the app the tools call (the one this is
    mounted in); `services` checks the token."""

    def __init__(self, api: ASGIApp, services: Services) -> None:
        self._api = api
        self._services = services
        self.server = build_server(self._caller)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._manager: StreamableHTTPSessionManager | None = None
        self._ready: asyncio.Event | None = None
        self._holder: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = Headers(scope=scope)
        token = agent_token(headers)
        if token is None:
            await self._refuse(
                scope,
                send,
                Unauthenticated(
                    "Send the agent's access token as 'Authorization: Bearer <token>' "
                    "(or X-Agent-Token)."
                ),
            )
            return
        try:
            await anyio.to_thread.run_sync(self._authenticate, token)
        except Unauthenticated as exc:
            await self._refuse(scope, send, exc)
            return
        host = headers.get("host") or "127.0.0.1"
        client = scope.get("client") or ("127.0.0.1", 0)
        caller = ApiCaller(
            f"{scope.get('scheme', 'http')}://{host}",
            token,
            transport=httpx.ASGITransport(app=self._api, client=(client[0], client[1])),
        )
        manager = await self._running_manager()
        reset = _request_caller.set(caller)
        try:
            await manager.handle_request(scope, receive, send)
        finally:
            _request_caller.reset(reset)

    def _authenticate(self, token: str) -> None:
        with self._services.database.read() as session:
            authenticate_token(session, token)

    @staticmethod
    async def _caller(ctx: ServerRequestContext[Any, Any]) -> ApiCaller:
        caller = _request_caller.get()
        if caller is None:  # pragma: no cover - every request sets it
            raise ApiError(
                status=401, code=ErrorCode.UNAUTHENTICATED.value, message="No agent token."
            )
        return caller

    @staticmethod
    async def _refuse(scope: Scope, send: Send, exc: Unauthenticated) -> None:
        request_id = scope.get("state", {}).get("request_id")
        body = {
            "error": {
                "code": exc.code.value,
                "message": exc.message,
                "details": exc.details,
                "request_id": request_id,
            }
        }
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def _running_manager(self) -> StreamableHTTPSessionManager:
        """The session manager of the running event loop, started on first use."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._manager is None or self._ready is None:
            manager = StreamableHTTPSessionManager(
                app=self.server, stateless=True, json_response=True
            )
            ready = asyncio.Event()

            async def hold() -> None:
                try:
                    async with manager.run():
                        ready.set()
                        await asyncio.Event().wait()  # until the loop shuts down
                finally:
                    ready.set()

            self._loop, self._manager, self._ready = loop, manager, ready
            # A fresh context: the holder must not inherit this request's caller.
            self._holder = loop.create_task(hold(), context=contextvars.Context())
        await self._ready.wait()
        if self._holder is not None and self._holder.done():
            self._manager = None  # it failed to start or stopped: the next request retries
            raise RuntimeError("the MCP session manager is not running")
        return self._manager


def agents_mcp_route(api: ASGIApp, services: Services) -> Route:
    """The route to add to the API app: /mcp/agents, every method, not in the OpenAPI."""
    return Route(MCP_AGENTS_PATH, AgentsMcpEndpoint(api, services), include_in_schema=False)
