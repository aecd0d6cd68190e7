"""`billfold mcp`: the MCP server on stdio (billfold.mcp.stdio), for agent hosts."""

from __future__ import annotations

import importlib

import typer

from billfold.cli.output import fail


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)


def mcp() -> None:
    """Serve Billfold's MCP tools on stdin/stdout (BILLFOLD_URL, BILLFOLD_TOKEN)."""
    try:
        stdio = importlib.import_module("billfold.mcp.stdio")
    except ModuleNotFoundError as exc:
        fail(f"the MCP server is not available in this install ({exc})", "not_supported")
    stdio.run()
