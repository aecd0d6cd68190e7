"""The hot path's fast lane: usage charges, usage holds and their captures without the
router (`POST /api/admin/v1/usage-charges`, `/usage-holds`, `/usage-holds/{id}/capture`).

The platform posts a usage charge (or a hold and its capture) for every unit of usage, so
on these routes the framework's own work (route matching, dependency solving,
validation-error plumbing) is most of a request's Python time. This pure ASGI middleware
answers the plain, well-formed case itself, with the same use case as the route
(`charge_usage_async`, `create_hold_async`, `capture_hold_async`), the same parsing
(`billfold.api.routing`) and the same reply (`deps.respond`): the admin key matches, the
body is valid JSON of the route's request model, the Idempotency-Key (if any) is well
formed, the query string is empty and the account the body names (if it names one) is
known to live on real time. Anything else (a bad key, a 422, an account on a test clock,
an unknown account, an empty body) it hands on, body included, to the FastAPI route,
which answers exactly as it always did.

It sits inside `RequestContext` (request id, security headers, body cap) and
`RequestMetrics` (which labels it with the route's template), so the response is the
route's, byte for byte, apart from what varies anyway (ids, times).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold.api.deps import call_of, respond
from billfold.api.errors import billfold_error_response, error_response, scope_request_id
from billfold.api.routing import parse_json_body
from billfold.api.scopes import USAGE
from billfold.application.idempotent import Reply
from billfold.application.testclock import on_real_time
from billfold.application.usecases import operator_keys
from billfold.application.usecases.base import Call
from billfold.application.usecases.holds import capture_hold_async, create_hold_async
from billfold.application.usecases.usage import USAGE_CHARGES_PATH, charge_usage_async
from billfold.errors import BillfoldError
from billfold.schemas import RequestModel
from billfold.services import Services
from billfold.wallet.schemas import (
    UsageChargeRequest,
    UsageHoldCaptureRequest,
    UsageHoldRequest,
)

USAGE_HOLDS_PATH = "/api/admin/v1/usage-holds"
_CAPTURE = "/capture"


@dataclass(frozen=True)
class _Lane:
    """One route the fast lane answers: its template (what the metrics middleware reads to
    label the request), its request model and its use case (services, call, body, the
    path's parameter)."""

    route: SimpleNamespace
    model: type[RequestModel]
    run: Callable[[Services, Call, Any, str], Awaitable[Reply]]


def _charge(app: Services, call: Call, body: Any, _: str) -> Awaitable[Reply]:
    return charge_usage_async(app, call=call, body=body)


def _hold(app: Services, call: Call, body: Any, _: str) -> Awaitable[Reply]:
    return create_hold_async(app, call=call, body=body)


def _capture(app: Services, call: Call, body: Any, hold_id: str) -> Awaitable[Reply]:
    return capture_hold_async(app, call=call, hold_id=hold_id, body=body)


_CHARGES = _Lane(SimpleNamespace(path_format=USAGE_CHARGES_PATH), UsageChargeRequest, _charge)
_HOLDS = _Lane(SimpleNamespace(path_format=USAGE_HOLDS_PATH), UsageHoldRequest, _hold)
_CAPTURES = _Lane(
    SimpleNamespace(path_format=USAGE_HOLDS_PATH + "/{hold_id}" + _CAPTURE),
    UsageHoldCaptureRequest,
    _capture,
)


def _lane(path: str) -> tuple[_Lane, str] | None:
    """The lane of a request's path, and its path parameter (a hold's id)."""
    if path == USAGE_CHARGES_PATH:
        return _CHARGES, ""
    if path == USAGE_HOLDS_PATH:
        return _HOLDS, ""
    if path.startswith(USAGE_HOLDS_PATH + "/") and path.endswith(_CAPTURE):
        hold_id = path[len(USAGE_HOLDS_PATH) + 1 : -len(_CAPTURE)]
        if hold_id and "/" not in hold_id:
            return _CAPTURES, hold_id
    return None


class UsageFastPath:
    """Pure ASGI middleware answering well-formed usage charges (see the module)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = (
            _lane(scope["path"])
            if scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("query_string")
            else None
        )
        if lane is None:
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        replay = _replaying(body, receive, complete)
        call, request = self._parse(scope, body, lane[0]) if complete else (None, None)
        if call is None or request is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = lane[0].route
        account_id = getattr(request, "account_id", None)
        if account_id is not None:
            scope.setdefault("state", {})["account_id"] = account_id  # for its log line
        response: Response
        try:
            reply = await lane[0].run(self.services, call, request, lane[1])
        except BillfoldError as exc:
            response = billfold_error_response(exc, call.request_id)
        except Exception as exc:  # answered as the router's handlers would (503, 500)
            response = error_response(None, exc, call.request_id, self.services)
        else:
            response = respond(reply)
        await response(scope, replay, send)

    def _parse(self, scope: Scope, body: bytes, lane: _Lane) -> tuple[Call | None, Any]:
        authorization = key = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"idempotency-key" and key is None:
                key = value.decode("latin-1")
            elif name == b"content-type":
                json_body = b"json" in value
        if authorization is None or not json_body or not body:
            return None, None
        scheme, token = get_authorization_scheme_param(authorization)  # as HTTPBearer does
        if scheme.lower() != "bearer" or not token:
            return None, None
        # A key known right now to allow usage:write (the admin key, or an operator key
        # looked up moments ago); any other the route authenticates (and may refuse).
        scopes = operator_keys.remembered(self.services, token)
        if scopes is None or not operator_keys.allows(scopes, USAGE):
            return None, None
        try:
            request = lane.model.model_validate(parse_json_body(body))
            call = call_of("POST", scope["path"], "", key, body, scope_request_id(scope))
        except (ValueError, ValidationError, BillfoldError):
            return None, None  # the route says what is wrong, as it always did
        account_id = getattr(request, "account_id", None)
        if account_id is not None and not on_real_time(self.services, account_id):
            return None, None  # the route puts the request on the account's clock
        return call, request


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body, and False if the client went away before sending all of it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replaying(body: bytes, receive: Receive, complete: bool) -> Receive:
    """A `receive` handing the body already read to the next reader (or, if the client
    went away while sending it, the disconnect), then the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if not complete:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


__all__ = ["UsageFastPath"]
