"""The MCP front end: the agent API as four MCP tools (agent-billing, agent-wallet,
agent-subscriptions, list-plans), over Streamable HTTP at /mcp/agents (`http`) and over
stdio (`stdio`). Every tool action is one agent-API request (`actions`, `caller`)."""
