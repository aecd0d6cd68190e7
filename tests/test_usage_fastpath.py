"""The usage charge's fast lane (`billfold.api.fastpath`) answers as the route does.

The same sequence of requests (charges, a replay, a reused key, a refusal, malformed
bodies, a wrong admin key, an unknown account, a query string) goes once through the app
with the fast lane in front of a route-only app, and once to the route-only app alone, on
two accounts funded alike: statuses, error codes, replay headers, response fields and the
final balances agree; the route saw exactly the requests the fast lane hands on, each
with its body intact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold.api.app import create_app
from billfold.api.fastpath import UsageFastPath
from billfold.services import Services
from tests.conftest import ADMIN_KEY
from tests.helpers import Api

PATH = "/api/admin/v1/usage-charges"


class Recording:
    """An ASGI app in front of `app` noting each request it gets, with its whole body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def noting() -> Message:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        try:
            await self.app(scope, noting, send)
        finally:
            self.seen.append((scope["path"], b"".join(chunks)))


def _requests(account_id: str, run: str) -> list[tuple[str, dict[str, str], bytes]]:
    """(label, headers, body) in order; keys unique to the run."""

    def body(amount: Any, account: str = account_id) -> bytes:
        return json.dumps({"account_id": account, "amount": amount, "usecase": "tokens"}).encode()

    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    return [
        ("first charge", {**admin, "Idempotency-Key": f"{run}-1"}, body("1")),
        ("replay", {**admin, "Idempotency-Key": f"{run}-1"}, body("1")),
        ("key reused", {**admin, "Idempotency-Key": f"{run}-1"}, body("2")),
        ("too much", {**admin, "Idempotency-Key": f"{run}-2"}, body("20")),
        ("no key", admin, body("1")),
        ("negative", {**admin, "Idempotency-Key": f"{run}-3"}, body("-1")),
        ("not json", {**admin, "Idempotency-Key": f"{run}-4"}, b"{not json"),
        ("nan", {**admin, "Idempotency-Key": f"{run}-5"}, b'{"account_id":"x","amount":NaN}'),
        ("wrong admin key", {**admin, "Authorization": "Bearer nope"}, body("1")),
        ("long key", {**admin, "Idempotency-Key": "k" * 300}, body("1")),
        ("unknown account", admin, body("1", "acct_doesnotexist")),
        ("form body", {**admin, "Content-Type": "text/plain"}, body("1")),
    ]


HANDED_ON = {  # what the fast lane leaves to the route (the first: account not yet known)
    "first charge",
    "negative",
    "not json",
    "nan",
    "wrong admin key",
    "long key",
    "unknown account",
    "form body",
}


async def _play(app: ASGIApp, account_id: str, run: str, query: str = "") -> list[dict[str, Any]]:
    seen = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://billfold.test") as client:
        for label, headers, body in _requests(account_id, run):
            response = await client.post(PATH + query, headers=headers, content=body)
            seen.append(_seen(label, response, "balance_after"))
    return seen


def _seen(label: str, response: httpx.Response, *fields: str) -> dict[str, Any]:
    """What one answer says, apart from what differs between two accounts (ids, times):
    its status, error code, replay header, the names of its fields and these fields'
    values (as `data.<field>`)."""
    payload = response.json()
    data = payload.get("data") or {}
    return {
        "label": label,
        "status": response.status_code,
        "code": (payload.get("error") or {}).get("code"),
        "replayed": response.headers.get("Idempotency-Replayed"),
        "fields": sorted(data),
        **{f"data.{field}": data.get(field) for field in fields},
    }


def _route_only(services: Services) -> ASGIApp:
    settings = services.settings.model_copy(update={"usage_fast_path": False})
    return create_app(dataclasses.replace(services, settings=settings))


def test_fast_lane_answers_as_the_route(api: Api, services: Services) -> None:
    fast_agent, route_agent = api.new_agent(), api.new_agent()
    fast_agent.fund(10)
    route_agent.fund(10)
    route = Recording(_route_only(services))
    fast = UsageFastPath(route, services)
    run = uuid.uuid4().hex[:8]

    by_fast = asyncio.run(_play(fast, fast_agent.account_id, f"f{run}"))
    handed_on = list(route.seen)
    by_route = asyncio.run(_play(_route_only(services), route_agent.account_id, f"r{run}"))

    assert by_fast == by_route
    statuses = {row["label"]: (row["status"], row["code"]) for row in by_fast}
    assert statuses["first charge"] == (201, None)
    assert statuses["key reused"] == (422, "idempotency_key_reused")
    assert statuses["too much"] == (402, "insufficient_funds")
    assert statuses["unknown account"] == (404, "account_not_found")
    assert statuses["wrong admin key"][0] == 401
    assert [row["replayed"] for row in by_fast][:2] == [None, "true"]
    sent = _requests(fast_agent.account_id, f"f{run}")
    expected = [body for label, _, body in sent if label in HANDED_ON]
    assert [body for _, body in handed_on] == expected
    assert fast_agent.balance() == route_agent.balance() == Decimal(8)
    assert api.ledger_check(fast_agent.account_id)["consistent"] is True


def test_fast_lane_leaves_other_requests_alone(api: Api, services: Services) -> None:
    """A query string, another method or another path is the router's, untouched."""
    agent = api.new_agent()
    agent.fund(10)
    route = Recording(_route_only(services))
    fast = UsageFastPath(route, services)
    asyncio.run(_play(fast, agent.account_id, uuid.uuid4().hex[:8]))  # now known
    route.seen.clear()
    played = asyncio.run(_play(fast, agent.account_id, uuid.uuid4().hex[:8], query="?x=1"))
    assert len(route.seen) == len(played)
    assert played[0]["status"] == 201


def test_fast_lane_answers_carry_the_request_id_and_headers(api: Api) -> None:
    """In the served app the fast lane sits inside RequestContext: its answers have the
    request id (header and error envelope) and the security headers like any other."""
    agent = api.new_agent()
    agent.fund(10)
    assert api.charge_usage(agent.account_id, "0.5").status_code == 201  # now known
    charged = api.charge_usage(agent.account_id, "0.5", key=f"k-{uuid.uuid4()}")
    refused = api.charge_usage(agent.account_id, 100, key=f"k-{uuid.uuid4()}")
    assert (charged.status_code, refused.status_code) == (201, 402)
    for response in (charged, refused):
        assert response.headers["x-request-id"].startswith("req_")
        assert "content-security-policy" in response.headers
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]


HOLDS = "/api/admin/v1/usage-holds"


async def _play_holds(app: ASGIApp, account_id: str, run: str) -> list[dict[str, Any]]:
    """Holds and captures, the hold ids taken from the answers."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}

    def hold(amount: str) -> bytes:
        return json.dumps({"account_id": account_id, "amount": amount, "usecase": "llm"}).encode()

    seen: list[dict[str, Any]] = []
    ids: list[str] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://billfold.test") as client:

        async def post(label: str, path: str, body: bytes, key: str | None = None) -> None:
            headers = {**admin, "Idempotency-Key": key} if key else admin
            response = await client.post(path, headers=headers, content=body)
            data = response.json().get("data") or {}
            if response.status_code == 201 and data.get("id") not in ids:
                ids.append(data["id"])
            seen.append(_seen(label, response, "status", "captured_amount", "balance_after"))

        await post("hold", HOLDS, hold("3"), f"{run}-h1")
        await post("hold again (known account)", HOLDS, hold("2"), f"{run}-h2")
        await post("hold replayed", HOLDS, hold("3"), f"{run}-h1")
        await post("hold too much", HOLDS, hold("50"))
        await post("capture", f"{HOLDS}/{ids[0]}/capture", b'{"amount": "0.5"}', f"{run}-c1")
        await post(
            "capture replayed", f"{HOLDS}/{ids[0]}/capture", b'{"amount": "0.5"}', f"{run}-c1"
        )
        await post("capture twice", f"{HOLDS}/{ids[0]}/capture", b'{"amount": "0.5"}')
        await post("capture too much", f"{HOLDS}/{ids[1]}/capture", b'{"amount": "9"}')
        await post("capture unknown", f"{HOLDS}/hold_nope/capture", b"{}")
        await post("capture extra segment", f"{HOLDS}/{ids[1]}/x/capture", b"{}")
        await post("capture all, empty body", f"{HOLDS}/{ids[1]}/capture", b"")
    return seen


def test_fast_lane_answers_holds_and_captures_as_the_routes(api: Api, services: Services) -> None:
    fast_agent, route_agent = api.new_agent(), api.new_agent()
    fast_agent.fund(10)
    route_agent.fund(10)
    route = Recording(_route_only(services))
    fast = UsageFastPath(route, services)
    run = uuid.uuid4().hex[:8]

    by_fast = asyncio.run(_play_holds(fast, fast_agent.account_id, f"f{run}"))
    by_route = asyncio.run(_play_holds(_route_only(services), route_agent.account_id, f"r{run}"))

    assert by_fast == by_route
    answers = {row["label"]: (row["status"], row["code"]) for row in by_fast}
    assert answers == {
        "hold": (201, None),
        "hold again (known account)": (201, None),
        "hold replayed": (201, None),
        "hold too much": (402, "insufficient_funds"),
        "capture": (200, None),
        "capture replayed": (200, None),
        "capture twice": (409, "hold_not_active"),
        "capture too much": (409, "hold_amount_exceeded"),
        "capture unknown": (404, "hold_not_found"),
        "capture extra segment": (404, "not_found"),
        "capture all, empty body": (200, None),
    }
    assert [r["replayed"] for r in by_fast if "replayed" in r["label"]] == ["true", "true"]
    # The lane answered the plain ones itself; the route saw the first (account not yet
    # known), the extra segment and the empty body.
    handed_on = [path for path, _ in route.seen]
    assert len(handed_on) == 3 and handed_on[0] == HOLDS
    assert fast_agent.balance() == route_agent.balance() == Decimal("10") - Decimal("2.5")
    assert api.ledger_check(fast_agent.account_id)["consistent"] is True
