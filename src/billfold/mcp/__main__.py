"""`python -m billfold.mcp`: the MCP server over stdio (billfold.mcp.stdio)."""

from billfold.mcp.stdio import run

if __name__ == "__main__":
    run()
