"""MCP over stdio: the same four tools, for an MCP client that spawns `billfold mcp`
(or `python -m billfold.mcp`).

The agent's token comes from BILLFOLD_TOKEN. With BILLFOLD_URL the tools call that
server's agent API; without it they call an embedded Billfold in-process (the app that
`billfold serve` would run, on the same settings: BILLFOLD_DATABASE_URL and the rest,
its schema upgraded first), through httpx.ASGITransport, so nothing listens on a port.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from mcp.server import ServerRequestContext
from mcp.server.stdio import stdio_server
from starlette.types import ASGIApp

from billfold.application.container import build_services
from billfold.application.jobs import start_in_thread
from billfold.config import Settings, get_settings
from billfold.mcp.caller import ApiCaller
from billfold.mcp.server import build_server
from billfold.migrate import upgrade
from billfold.services import Services

__all__ = ["embedded_app", "run", "serve_stdio"]

# The API app factory, resolved by name at run time: api/app.py mounts the MCP endpoint
# (api → mcp), so a static import of it here would close an import cycle.
API_APP_FACTORY = "billfold.api.app:create_app"


def _admin_key(settings: Settings) -> str:
    """The operator key the embedded services are built with (the tools never use it):
    the configured one, var/admin_key if `billfold serve` generated it, else a throwaway."""
    if settings.admin_key:
        return settings.admin_key
    path = settings.var_dir / "admin_key"
    if path.exists():
        return path.read_text().strip()
    return f"bf_admin_{secrets.token_urlsafe(32)}"


def _factory() -> Callable[[Services], ASGIApp]:
    module, _, name = API_APP_FACTORY.partition(":")
    factory: Callable[[Services], ASGIApp] = getattr(importlib.import_module(module), name)
    return factory


def embedded_app(settings: Settings | None = None, *, worker: bool = True) -> tuple[ASGIApp, str]:
    """The API app as `billfold serve` builds it (migrated first), and its public URL.
    `worker`: run the job worker in this process too, as serve does by default."""
    settings = settings or get_settings()
    upgrade(settings.database_url)
    services = build_services(settings, _admin_key(settings))
    if worker:
        start_in_thread(services)
    return _factory()(services), settings.public_url


async def serve_stdio(caller: ApiCaller) -> None:
    async def resolve(ctx: ServerRequestContext[Any, Any]) -> ApiCaller:
        return caller

    server = build_server(resolve)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def run() -> None:
    """Serve the tools over stdio until the client closes the pipe."""
    token = os.environ.get("BILLFOLD_TOKEN", "").strip()
    if not token:
        print(
            "billfold mcp: set BILLFOLD_TOKEN to the agent's access token "
            "(POST /api/agents/v1/auth/login).",
            file=sys.stderr,
        )
        raise SystemExit(2)
    url = os.environ.get("BILLFOLD_URL", "").strip()
    if url:
        caller = ApiCaller(url, token)
    else:
        # Migrations and start-up may print: stdout is the MCP wire.
        with contextlib.redirect_stdout(sys.stderr):
            app, public_url = embedded_app()
        caller = ApiCaller(public_url, token, transport=httpx.ASGITransport(app=app))
    anyio.run(serve_stdio, caller)
