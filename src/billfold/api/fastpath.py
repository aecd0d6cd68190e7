"""The usage charge's fast lane: `POST /api/admin/v1/usage-charges` without the router.

The platform posts a usage charge for every unit of usage, so on this one route the
framework's own work (route matching, dependency solving, validation-error plumbing) is
most of a charge's Python time. This pure ASGI middleware answers the plain, well-formed
case itself, with the same use case as the route (`usage.charge_usage_async`), the same
parsing (`billfold.api.routing`) and the same reply (`deps.respond`): the admin key
matches, the body is valid JSON of a valid `UsageChargeRequest`, the Idempotency-Key (if
any) is well formed, the query string is empty and the account is known to live on real
time. Anything else (a bad key, a 422, an account on a test clock, an unknown account) it
hands on, body included, to the FastAPI route, which answers exactly as it always did.

It sits inside `RequestContext` (request id, security headers, body cap) and
`RequestMetrics` (which labels it with the route's template), so the response is the
route's, byte for byte, apart from what varies anyway (ids, times).
"""

from __future__ import annotations

from types import SimpleNamespace

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold.api.deps import call_of, respond
from billfold.api.errors import billfold_error_response, scope_request_id
from billfold.api.routing import parse_json_body
from billfold.application.testclock import on_real_time
from billfold.application.usecases.base import Call
from billfold.application.usecases.usage import USAGE_CHARGES_PATH, charge_usage_async
from billfold.errors import BillfoldError
from billfold.security import secret_matches
from billfold.services import Services
from billfold.wallet.schemas import UsageChargeRequest

# What the metrics middleware reads to label a request with its route's template.
_ROUTE = SimpleNamespace(path_format=USAGE_CHARGES_PATH)


class UsageFastPath:
    """Pure ASGI middleware answering well-formed usage charges (see the module)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != USAGE_CHARGES_PATH
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        replay = _replaying(body, receive, complete)
        call, charge = self._parse(scope, body) if complete else (None, None)
        if call is None or charge is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = _ROUTE
        response: Response
        try:
            reply = await charge_usage_async(self.services, call=call, body=charge)
        except BillfoldError as exc:
            response = billfold_error_response(exc, call.request_id)
        else:
            response = respond(reply)
        await response(scope, replay, send)

    def _parse(self, scope: Scope, body: bytes) -> tuple[Call | None, UsageChargeRequest | None]:
        authorization = key = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"idempotency-key" and key is None:
                key = value.decode("latin-1")
            elif name == b"content-type":
                json_body = b"json" in value
        if authorization is None or not json_body:
            return None, None
        scheme, token = get_authorization_scheme_param(authorization)  # as HTTPBearer does
        if scheme.lower() != "bearer" or not token:
            return None, None
        if not secret_matches(token, self.services.admin_key_hash):
            return None, None
        try:
            charge = UsageChargeRequest.model_validate(parse_json_body(body))
            call = call_of("POST", USAGE_CHARGES_PATH, "", key, body, scope_request_id(scope))
        except (ValueError, ValidationError, BillfoldError):
            return None, None  # the route says what is wrong, as it always did
        if not on_real_time(self.services, charge.account_id):
            return None, None  # the route puts the request on the account's clock
        return call, charge


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
