"""MCP over stdio: the same four tools, for an MCP client that spawns `billfold mcp`
(or `python -m billfold.cli mcp`).

The agent's token comes from BILLFOLD_TOKEN. With BILLFOLD_URL the tools call that
server's agent API; without it they call the app `embedded()` builds (the CLI passes the
one `billfold serve` would run) in-process through httpx.ASGITransport, so nothing
listens on a port.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from mcp.server import ServerRequestContext
from mcp.server.stdio import stdio_server
from starlette.types import ASGIApp

from billfold.mcp.caller import ApiCaller
from billfold.mcp.server import build_server

__all__ = ["run", "serve_stdio"]


async def serve_stdio(caller: ApiCaller) -> None:
    async def resolve(ctx: ServerRequestContext[Any, Any]) -> ApiCaller:
        return caller

    server = build_server(resolve)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def run(embedded: Callable[[], tuple[ASGIApp, str]]) -> None:
    """Serve the tools over stdio until the client closes the pipe. `embedded()`: the app
    and its public URL, used when BILLFOLD_URL is not set."""
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
            app, public_url = embedded()
        caller = ApiCaller(public_url, token, transport=httpx.ASGITransport(app=app))
    anyio.run(serve_stdio, caller)
