"""The MCP server (official SDK, low-level `Server`): four tools run from the action table.

A tool call is validated against its action (required fields named in the error), turned
into one agent-API request (`billfold.mcp.actions`), and sent with the caller the
transport resolves for the request (`resolve_caller`): the HTTP mount's caller carries
that request's bearer token, stdio's the configured one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import mcp_types as types
from mcp.server import Server, ServerRequestContext

from billfold import __version__
from billfold.errors import ErrorCode
from billfold.mcp.actions import TOOLS, Action, ToolSpec, input_schema, tool_by_name
from billfold.mcp.caller import ApiCaller, ApiError, ApiReply

__all__ = ["SERVER_NAME", "CallerResolver", "build_server", "call_action", "list_tools"]

SERVER_NAME = "billfold-agents"
INSTRUCTIONS = (
    "Billfold: the agent's billing, prepaid wallet and subscriptions. Amounts are in currency "
    "units (at most 2 decimals). Cards are tokenized outside Billfold: agent-billing "
    "`stripe_config` says where. Money actions accept an `idempotency_key`; the result "
    "returns the key used, and repeating the call with it takes effect at most once. "
    "Errors come back as tool errors whose structured content holds the API's error "
    "`code`, `message`, `details` and, for card payments, `decline_code`."
)

CallerResolver = Callable[[ServerRequestContext[Any, Any]], Awaitable[ApiCaller]]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class ArgumentError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def list_tools() -> list[types.Tool]:
    return [
        types.Tool(
            name=tool.name,
            title=tool.title,
            description=tool.description,
            input_schema=input_schema(tool),
            annotations=types.ToolAnnotations(
                title=tool.title,
                read_only_hint=tool.read_only,
                destructive_hint=tool.destructive,
                idempotent_hint=tool.idempotent,
                open_world_hint=False,
            ),
        )
        for tool in TOOLS
    ]


def _matches(value: Any, schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    names: list[str] = kinds if isinstance(kinds, list) else [str(kinds)]
    for name in names:
        allowed = _JSON_TYPES.get(name, (object,))
        if isinstance(value, bool) and name in {"integer", "number"}:
            continue
        if isinstance(value, allowed):
            return "enum" not in schema or value in schema["enum"]
    return False


def _resolve(tool: ToolSpec, arguments: dict[str, Any]) -> Action:
    if tool.has_action_argument:
        name = arguments.get("action")
        if name is None:
            raise ArgumentError("action", f"`action` is required: one of {_names(tool)}.")
        found = tool.action(name) if isinstance(name, str) else None
        if found is None:
            raise ArgumentError("action", f"Unknown action {name!r}: one of {_names(tool)}.")
        action = found
    else:
        action = tool.actions[0]
    for key, value in arguments.items():
        if key == "action" and tool.has_action_argument:
            continue
        spec = tool.fields.get(key)
        if spec is None:
            raise ArgumentError(key, f"{tool.name} has no argument `{key}`.")
        if value is None and not action.send_nulls:
            continue
        if key not in action.arguments:
            raise ArgumentError(key, f"`{key}` does not apply to action {action.name}.")
        if not _matches(value, dict(spec.schema)):
            raise ArgumentError(key, f"`{key}` is not valid: {spec.description}")
    for key in action.required:
        if arguments.get(key) is None:
            raise ArgumentError(key, f"`{key}` is required for action {action.name}.")
    return action


def _names(tool: ToolSpec) -> str:
    return ", ".join(a.name for a in tool.actions)


def _path(action: Action, arguments: dict[str, Any]) -> str:
    def value(match_name: str) -> str:
        raw = str(arguments[match_name])
        if raw in {"", ".", ".."}:
            raise ArgumentError(match_name, f"`{match_name}` is not valid.")
        return quote(raw, safe="")

    path = action.path
    for name in action.path_params:
        path = path.replace("{" + name + "}", value(name))
    return path


async def call_action(
    caller: ApiCaller, tool: ToolSpec, arguments: dict[str, Any]
) -> types.CallToolResult:
    """Run one tool call: validate, send the action's request, shape the answer."""
    key: str | None = None
    try:
        action = _resolve(tool, arguments)
        path = _path(action, arguments)
        if action.keyed:
            given = arguments.get("idempotency_key")
            key = given if isinstance(given, str) else f"mcp_{uuid.uuid4().hex}"
        query = {k: arguments[k] for k in action.query if arguments.get(k) is not None}
        body: dict[str, Any] | None = None
        if action.body:
            body = {
                k: arguments[k]
                for k in action.body
                if (k in arguments if action.send_nulls else arguments.get(k) is not None)
            }
        reply = await caller.request(
            action.method, path, params=query or None, json=body, idempotency_key=key
        )
    except ArgumentError as exc:
        return _error(
            ApiError(
                status=422,
                code=ErrorCode.INVALID_REQUEST.value,
                message=exc.message,
                details={"field": exc.field},
            ),
            key,
        )
    except ApiError as exc:
        return _error(exc, key)
    return _success(reply, key)


def _success(reply: ApiReply, key: str | None) -> types.CallToolResult:
    content: dict[str, Any] = {"data": reply.data}
    if key is not None:
        content["idempotency_key"] = key
        content["idempotency_replayed"] = reply.replayed
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(content, ensure_ascii=False))],
        structured_content=content,
        is_error=False,
    )


def _error(error: ApiError, key: str | None) -> types.CallToolResult:
    content: dict[str, Any] = {"error": error.as_dict()}
    if error.data is not None:
        content["data"] = error.data
    if key is not None:
        content["idempotency_key"] = key
    summary = f"{error.code}: {error.message}"
    if error.decline_code:
        summary += f" (decline_code {error.decline_code})"
    if key is not None:
        summary += f" [idempotency_key {key}]"
    return types.CallToolResult(
        content=[
            types.TextContent(type="text", text=summary),
            types.TextContent(type="text", text=json.dumps(content, ensure_ascii=False)),
        ],
        structured_content=content,
        is_error=True,
    )


def build_server(resolve_caller: CallerResolver) -> Server[Any]:
    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list_tools())

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = tool_by_name(params.name)
        if tool is None:
            return _error(
                ApiError(
                    status=404,
                    code=ErrorCode.NOT_FOUND.value,
                    message=f"No tool {params.name!r}.",
                    details={"field": "name"},
                ),
                None,
            )
        try:
            caller = await resolve_caller(ctx)
        except ApiError as exc:
            return _error(exc, None)
        return await call_action(caller, tool, dict(params.arguments or {}))

    return Server(
        SERVER_NAME,
        version=__version__,
        title="Billfold",
        instructions=INSTRUCTIONS,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )
