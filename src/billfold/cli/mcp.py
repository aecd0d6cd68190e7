"""`billfold mcp`: the MCP server on stdio (billfold.mcp.stdio), for agent hosts."""

from __future__ import annotations

import typer

from billfold.api.embedded import stdio_app
from billfold.mcp.stdio import run


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)


def mcp() -> None:
    """Serve Billfold's MCP tools on stdin/stdout for an agent host.

    The agent's token from BILLFOLD_TOKEN; the server from BILLFOLD_URL, or without it
    an embedded Billfold in this process on this environment's settings."""
    run(stdio_app)
