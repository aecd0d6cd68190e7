"""The MCP server: the agent API as four tools, over Streamable HTTP at /mcp/agents and over
stdio (`python -m billfold.cli mcp`, as `billfold mcp` runs), driven with the official MCP
client."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
import requests
from mcp.client import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from billfold.mcp.actions import TOOLS
from tests.helpers import CARD_DECLINED, CARD_OK, Agent, Api

PROCESSORS = ("sandbox", "stripe")
REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL_NAMES = {"agent-billing", "agent-wallet", "agent-subscriptions", "list-plans"}
# The agent routes MCP leaves to the agent's own login flow.
AUTH_ROUTES = {
    ("POST", "/auth/login"),
    ("POST", "/auth/logout"),
    ("DELETE", "/auth/tokens/current"),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def mcp_url(api: Api) -> str:
    return api.base_url + "/mcp/agents"


@asynccontextmanager
async def http_session(api: Api, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0)) as client,
        streamable_http_client(mcp_url(api), http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def bearer(agent: Agent) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent.token}"}


@asynccontextmanager
async def stdio_session(env: dict[str, str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "billfold.cli", "mcp"],
        env={"PYTHONPATH": str(REPO_ROOT / "src"), **env},
        cwd=str(REPO_ROOT),
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


class Calls:
    """A session's tool calls, and the (tool, action) pairs they exercised."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.seen: set[tuple[str, str]] = set()

    async def raw(self, tool: str, **arguments: Any) -> types.CallToolResult:
        self.seen.add((tool, str(arguments.get("action", "list"))))
        return await self.session.call_tool(tool, arguments)

    async def ok(self, tool: str, **arguments: Any) -> Any:
        result = await self.raw(tool, **arguments)
        assert not result.is_error, (tool, arguments, result.structured_content)
        content = result.structured_content
        assert content is not None
        return content["data"]

    async def error(self, tool: str, code: str, **arguments: Any) -> dict[str, Any]:
        result = await self.raw(tool, **arguments)
        assert result.is_error, (tool, arguments, result.structured_content)
        content = result.structured_content
        assert content is not None
        error: dict[str, Any] = content["error"]
        assert error["code"] == code, content
        assert set(error) >= {"code", "message", "details", "decline_code"}
        return content


def new_plan(api: Api, price: int = 20, **extra: Any) -> int:
    body = {
        "name": f"MCP plan {uuid.uuid4().hex[:6]}",
        "price": price,
        "period": "month",
        "features": ["mcp"],
        **extra,
    }
    created = api.admin_post("/plans", body)
    assert created.status_code == 201, created.text
    plan_id: int = created.json()["data"]["id"]
    return plan_id


def amount(value: Any) -> Decimal:
    return Decimal(str(value))


# --- the tools --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_four_tools_with_their_schemas_and_annotations(api: Api) -> None:
    agent = api.new_agent()
    async with http_session(api, bearer(agent)) as session:
        listed = await session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOL_NAMES
    for spec in TOOLS:
        tool = tools[spec.name]
        schema = tool.input_schema
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        if spec.name == "list-plans":
            assert schema["properties"] == {}
        else:
            assert schema["required"] == ["action"]
            assert schema["properties"]["action"]["enum"] == [a.name for a in spec.actions]
            for name, prop in schema["properties"].items():
                assert prop["description"], (spec.name, name)
                assert "type" in prop, (spec.name, name)
        # Every action that takes an Idempotency-Key offers `idempotency_key`.
        if any(a.keyed for a in spec.actions):
            assert schema["properties"]["idempotency_key"]["type"] == "string"
        assert tool.annotations is not None
    billing = tools["agent-billing"]
    assert set(billing.input_schema["properties"]["action"]["enum"]) == {
        "overview",
        "stripe_config",
        "list_payment_methods",
        "add_payment_method",
        "set_default_payment_method",
        "remove_payment_method",
        "create_setup_intent",
        "create_payment_link",
        "get_billing_info",
        "update_billing_info",
        "list_invoices",
        "get_invoice",
        "get_invoice_pdf",
        "get_payment_status",
    }
    assert set(tools["agent-wallet"].input_schema["properties"]["action"]["enum"]) == {
        "balance",
        "transactions",
        "fund",
        "confirm_checkout",
        "withdraw",
        "enable_auto_funding",
        "disable_auto_funding",
        "validate_coupon",
        "redeem_coupon",
    }
    assert set(tools["agent-subscriptions"].input_schema["properties"]["action"]["enum"]) == {
        "list",
        "create",
        "get",
        "status",
        "change",
        "pause",
        "resume",
        "reset_cycle",
        "cancel",
        "fix_payment",
        "charge_amount",
        "confirm_checkout",
    }
    plans = tools["list-plans"].annotations
    assert plans is not None
    assert plans.read_only_hint is True and plans.idempotent_hint is True
    assert plans.destructive_hint is False
    for name in ("agent-wallet", "agent-subscriptions", "agent-billing"):
        hints = tools[name].annotations
        assert hints is not None
        assert hints.read_only_hint is False and hints.destructive_hint is True
        assert hints.idempotent_hint is False


def test_every_agent_route_is_one_mcp_action(api: Api) -> None:
    """The action table covers the agent API of the OpenAPI document exactly: every route
    (auth aside) is one action, and every action is a documented route."""
    document = requests.get(api.base_url + "/openapi.json", timeout=30).json()
    prefix = "/api/agents/v1"
    routes = {
        (method.upper(), path.removeprefix(prefix))
        for path, operations in document["paths"].items()
        if path.startswith(prefix + "/")
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    } - AUTH_ROUTES
    actions = [(a.method, a.path) for tool in TOOLS for a in tool.actions]
    assert len(actions) == len(set(actions)), "two actions send the same request"
    assert set(actions) == routes
    # Path parameters are named as the API names them.
    for tool in TOOLS:
        for action in tool.actions:
            params = document["paths"][prefix + action.path].get(action.method.lower(), {})
            in_path = {p["name"] for p in params.get("parameters", []) if p["in"] == "path"}
            assert in_path == set(action.path_params), (tool.name, action.name)
            assert set(re.findall(r"{(\w+)}", action.path)) <= set(action.required)


# --- every action on the live server ---------------------------------------------------


@pytest.mark.anyio
async def test_every_action_of_every_tool(api: Api) -> None:
    agent = api.new_agent()
    plan_a = new_plan(api, 20)
    plan_b = new_plan(api, 30)
    coupon = f"MCP{uuid.uuid4().hex[:8].upper()}"
    created = api.admin_post("/coupons", {"code": coupon, "kind": "credit", "amount": 5})
    assert created.status_code == 201, created.text
    async with http_session(api, bearer(agent)) as session:
        calls = Calls(session)
        await run_billing(api, calls)
        await run_wallet(api, calls, coupon)
        await run_subscriptions(api, calls, plan_a, plan_b)
        plans = await calls.ok("list-plans")
        assert {plan_a, plan_b} <= {p["id"] for p in plans["subscription_plans"]}
    # A second agent pays a subscription link (the first already has a subscription).
    other = api.new_agent()
    async with http_session(api, bearer(other)) as session:
        other_calls = Calls(session)
        link = await other_calls.ok("agent-subscriptions", action="create", plan_id=plan_a)
        assert link["purpose"] == "subscribe"
        await other_calls.error(
            "agent-subscriptions",
            "checkout_not_completed",
            action="confirm_checkout",
            session_id=link["session_id"],
        )
        paid = api.pay_link(link)
        assert paid.status_code in {200, 303}, paid.text
        confirmed = await other_calls.ok(
            "agent-subscriptions", action="confirm_checkout", session_id=link["session_id"]
        )
        assert confirmed["plan_id"] == plan_a, confirmed
        assert confirmed["session_id"] == link["session_id"]
    every = {
        (tool.name, action.name if tool.has_action_argument else "list")
        for tool in TOOLS
        for action in tool.actions
    }
    assert every - calls.seen - other_calls.seen == set()


async def run_billing(api: Api, calls: Calls) -> None:
    tool = "agent-billing"
    config = await calls.ok(tool, action="stripe_config")
    assert config["publishable_key"] == api.publishable_key
    card = api.tokenize(CARD_OK)
    added = await calls.ok(tool, action="add_payment_method", payment_method_id=card)
    assert added["id"] == card
    spare = api.tokenize(CARD_OK)
    await calls.ok(tool, action="add_payment_method", payment_method_id=spare, make_default=False)
    default = await calls.ok(tool, action="set_default_payment_method", payment_method_id=card)
    assert default["is_default"] is True
    cards = await calls.ok(tool, action="list_payment_methods")
    assert {card, spare} <= {pm["id"] for pm in cards["items"]}
    assert cards["default_payment_method_id"] == card
    removed = await calls.ok(tool, action="remove_payment_method", payment_method_id=spare)
    assert removed["deleted"] is True
    setup = await calls.ok(tool, action="create_setup_intent")
    assert setup["setup_intent_id"] and setup["client_secret"]
    info = await calls.ok(
        tool, action="update_billing_info", name="MCP Agent Ltd", address_country="DE"
    )
    assert info["name"] == "MCP Agent Ltd"
    got = await calls.ok(tool, action="get_billing_info")
    assert got["address_country"] == "DE"
    cleared = await calls.ok(tool, action="update_billing_info", name=None)
    assert cleared["name"] is None
    # A human pays a fund link; the wallet reports it.
    link = await calls.ok(tool, action="create_payment_link", purpose="fund", amount=10)
    assert link["payment_url"] and link["session_id"]
    paid = api.pay_link(link)
    assert paid.status_code in {200, 303}, paid.text
    confirmed = await calls.ok(
        "agent-wallet", action="confirm_checkout", session_id=link["session_id"]
    )
    assert confirmed["status"] == "complete", confirmed
    overview = await calls.ok(tool, action="overview")
    assert amount(overview["wallet_balance"]) == 10
    invoices = await calls.ok(tool, action="list_invoices", limit=10)
    items = invoices["items"]
    assert items, invoices
    invoice_id = items[0]["id"]
    invoice = await calls.ok(tool, action="get_invoice", invoice_id=invoice_id)
    assert invoice["id"] == invoice_id
    pdf = await calls.ok(tool, action="get_invoice_pdf", invoice_id=invoice_id)
    assert pdf["url"]
    fund = await calls.ok("agent-wallet", action="fund", amount=20, payment_method_id=card)
    status = await calls.ok(
        tool, action="get_payment_status", payment_intent_id=fund["payment_intent_id"]
    )
    assert status["status"] == "succeeded"


async def run_wallet(api: Api, calls: Calls, coupon: str) -> None:
    tool = "agent-wallet"
    before = amount((await calls.ok(tool, action="balance"))["balance"])
    funded = await calls.raw(tool, action="fund", amount=15)  # the default card
    assert not funded.is_error, funded.structured_content
    content = funded.structured_content
    assert content is not None
    assert content["idempotency_key"].startswith("mcp_")
    assert content["idempotency_replayed"] is False
    assert amount(content["data"]["balance"]) == before + 15
    withdrawn = await calls.ok(tool, action="withdraw", amount=5)
    assert amount(withdrawn["balance"]) == before + 10
    page = await calls.ok(tool, action="transactions", type="credit", limit=5)
    assert page["total"] >= 2
    enabled = await calls.ok(
        tool, action="enable_auto_funding", auto_charge_amount=25, charge_threshold=5
    )
    assert enabled["enabled"] is True
    disabled = await calls.ok(tool, action="disable_auto_funding")
    assert disabled["enabled"] is False
    valid = await calls.ok(tool, action="validate_coupon", coupon_code=coupon)
    assert valid["valid"] is True
    redeemed = await calls.ok(tool, action="redeem_coupon", coupon_code=coupon)
    assert redeemed
    again = await calls.ok(tool, action="validate_coupon", coupon_code=coupon)
    assert again["valid"] is False
    await calls.error(tool, "coupon_already_redeemed", action="redeem_coupon", coupon_code=coupon)


async def run_subscriptions(api: Api, calls: Calls, plan_a: int, plan_b: int) -> None:
    tool = "agent-subscriptions"
    card = api.tokenize(CARD_OK)
    sub = await calls.ok(tool, action="create", plan_id=plan_a, payment_method_id=card)
    sub_id = sub["id"]
    assert sub["status"] == "active", sub
    listed = await calls.ok(tool, action="list")
    assert sub_id in {s["id"] for s in listed["items"]}
    assert (await calls.ok(tool, action="get", subscription_id=sub_id))["id"] == sub_id
    assert (await calls.ok(tool, action="status", subscription_id=sub_id))["status"] == "active"
    changed = await calls.ok(tool, action="change", subscription_id=sub_id, new_plan_id=plan_b)
    assert changed["plan_id"] == plan_b
    await calls.error(
        tool, "plan_unchanged", action="change", subscription_id=sub_id, new_plan_id=plan_b
    )
    reset = await calls.ok(tool, action="reset_cycle", subscription_id=sub_id)
    assert reset["id"] == sub_id
    await calls.error(tool, "nothing_to_fix", action="fix_payment", subscription_id=sub_id)
    paused = await calls.ok(tool, action="pause", subscription_id=sub_id)
    assert paused["status"] == "paused"
    resumed = await calls.ok(tool, action="resume", subscription_id=sub_id)
    assert resumed["status"] == "active"
    charged = await calls.ok(tool, action="charge_amount", amount=7)
    assert charged["status"] == "succeeded"
    cancelled = await calls.ok(tool, action="cancel", subscription_id=sub_id, at_period_end=True)
    assert cancelled["id"] == sub_id


# --- errors, idempotency, auth ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_declined_card_is_a_structured_tool_error(api: Api) -> None:
    agent = api.new_agent()
    async with http_session(api, bearer(agent)) as session:
        calls = Calls(session)
        declined = await calls.error(
            "agent-wallet",
            "payment_declined",
            action="fund",
            amount=20,
            payment_method_id=api.tokenize(CARD_DECLINED),
            idempotency_key="declined-1",
        )
    assert declined["error"]["decline_code"] == "generic_decline"
    assert declined["error"]["details"]["decline_code"] == "generic_decline"
    assert declined["error"]["status"] == 402
    assert declined["error"]["request_id"].startswith("req_")
    assert declined["idempotency_key"] == "declined-1"
    assert declined["data"]  # the recorded attempt, as the API answers it
    assert agent.balance() == 0


@pytest.mark.anyio
async def test_a_repeated_fund_with_the_same_key_charges_once(api: Api) -> None:
    agent = api.new_agent()
    card = api.tokenize(CARD_OK)
    async with http_session(api, bearer(agent)) as session:
        calls = Calls(session)
        first = await calls.raw(
            "agent-wallet", action="fund", amount=30, payment_method_id=card, idempotency_key="k1"
        )
        second = await calls.raw(
            "agent-wallet", action="fund", amount=30, payment_method_id=card, idempotency_key="k1"
        )
        assert first.structured_content is not None and second.structured_content is not None
        assert not first.is_error and not second.is_error
        assert first.structured_content["idempotency_key"] == "k1"
        assert second.structured_content["idempotency_replayed"] is True
        assert first.structured_content["data"] == second.structured_content["data"]
        balance = await calls.ok("agent-wallet", action="balance")
        page = await calls.ok("agent-wallet", action="transactions")
        # The same key with another amount is refused, not charged.
        await calls.error(
            "agent-wallet",
            "idempotency_key_reused",
            action="fund",
            amount=31,
            payment_method_id=card,
            idempotency_key="k1",
        )
    assert amount(balance["balance"]) == 30
    assert page["total"] == 1
    assert agent.balance() == 30
    assert agent.transaction_count() == 1


@pytest.mark.anyio
async def test_arguments_are_checked_per_action(api: Api) -> None:
    agent = api.new_agent()
    async with http_session(api, bearer(agent)) as session:
        calls = Calls(session)
        missing = await calls.error("agent-wallet", "invalid_request", action="fund")
        assert missing["error"]["details"]["field"] == "amount"
        assert "amount" in missing["error"]["message"]
        bad = await calls.error("agent-wallet", "invalid_request", action="teleport")
        assert bad["error"]["details"]["field"] == "action"
        none = await calls.error("agent-subscriptions", "invalid_request")
        assert none["error"]["details"]["field"] == "action"
        wrong = await calls.error(
            "agent-subscriptions", "invalid_request", action="pause", subscription_id=7
        )
        assert wrong["error"]["details"]["field"] == "subscription_id"
        extra = await calls.error("agent-wallet", "invalid_request", action="balance", amount=5)
        assert extra["error"]["details"]["field"] == "amount"
        # The API's own validation comes back the same way.
        small = await calls.error("agent-wallet", "invalid_request", action="fund", amount=1)
        assert small["error"]["status"] == 422
        unknown = await calls.error(
            "agent-subscriptions", "subscription_not_found", action="get", subscription_id="sub_x"
        )
        assert unknown["error"]["details"]["subscription_id"] == "sub_x"


def test_a_missing_or_wrong_token_is_refused_before_mcp(api: Api) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    for extra in ({}, {"Authorization": "Bearer bf_at_wrong"}, {"X-Agent-Token": "nope"}):
        response = requests.post(
            mcp_url(api), json=initialize, headers={**headers, **extra}, timeout=30
        )
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["code"] == "unauthenticated"
        assert error["request_id"].startswith("req_")
        assert response.headers["www-authenticate"] == "Bearer"
    agent = api.new_agent()
    for good in (bearer(agent), {"X-Agent-Token": agent.token}):
        response = requests.post(
            mcp_url(api), json=initialize, headers={**headers, **good}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.json()["result"]["serverInfo"]["name"] == "billfold-agents"
    revoked = api.new_agent()
    assert revoked.delete("/auth/tokens/current").status_code == 200
    response = requests.post(
        mcp_url(api), json=initialize, headers={**headers, **bearer(revoked)}, timeout=30
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_revoked"


@pytest.mark.anyio
async def test_the_client_with_a_wrong_token_gets_no_session(api: Api) -> None:
    with pytest.raises(BaseException) as refused:
        async with http_session(api, {"Authorization": "Bearer bf_at_wrong"}):
            pass
    errors = [refused.value]
    while isinstance(errors[-1], BaseExceptionGroup):
        errors.append(errors[-1].exceptions[0])
    assert isinstance(errors[-1], MCPError), errors


# --- stdio -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stdio_serves_the_same_tools_against_a_server(api: Api) -> None:
    agent = api.new_agent()
    plan = new_plan(api, 12)
    env = {"BILLFOLD_URL": api.base_url, "BILLFOLD_TOKEN": agent.token}
    async with stdio_session(env) as session:
        listed = await session.list_tools()
        assert {tool.name for tool in listed.tools} == TOOL_NAMES
        calls = Calls(session)
        card = api.tokenize(CARD_OK)
        funded = await calls.raw("agent-wallet", action="fund", amount=12, payment_method_id=card)
        assert not funded.is_error, funded.structured_content
        assert funded.structured_content is not None
        key = funded.structured_content["idempotency_key"]
        replay = await calls.raw(
            "agent-wallet", action="fund", amount=12, payment_method_id=card, idempotency_key=key
        )
        assert not replay.is_error and replay.structured_content is not None
        assert replay.structured_content["idempotency_replayed"] is True
        assert amount((await calls.ok("agent-wallet", action="balance"))["balance"]) == 12
        plans = await calls.ok("list-plans")
        assert plan in {p["id"] for p in plans["subscription_plans"]}
        await calls.error(
            "agent-wallet",
            "payment_declined",
            action="fund",
            amount=10,
            payment_method_id=api.tokenize(CARD_DECLINED),
        )
    assert agent.balance() == 12


@pytest.mark.anyio
async def test_stdio_with_a_wrong_token_answers_tool_errors(api: Api) -> None:
    env = {"BILLFOLD_URL": api.base_url, "BILLFOLD_TOKEN": "bf_at_wrong"}
    async with stdio_session(env) as session:
        refused = await Calls(session).error("agent-wallet", "unauthenticated", action="balance")
    assert refused["error"]["status"] == 401


@pytest.mark.anyio
async def test_stdio_without_a_url_runs_an_embedded_billfold(tmp_path: Path) -> None:
    env = {
        "BILLFOLD_TOKEN": "bf_at_unknown",
        "BILLFOLD_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}",
        "BILLFOLD_VAR_DIR": str(tmp_path / "var"),
        "BILLFOLD_PROCESSOR": "sandbox",
    }
    env.pop("BILLFOLD_URL", None)
    assert "BILLFOLD_URL" not in os.environ
    async with stdio_session(env) as session:
        calls = Calls(session)
        plans = await calls.error("list-plans", "unauthenticated")
    assert plans["error"]["request_id"].startswith("req_")
    assert (tmp_path / "embedded.db").exists()  # migrated by the embedded start
