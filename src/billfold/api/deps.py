"""Request-scoped plumbing shared by routers: services, auth, a write's `Call` (its
Idempotency-Key) and how its `Reply` answers, and the account's time.

A request for an account on a sandbox test clock runs on the clock's time
(`billfold.clock`): the agent dependency sets it from the token's account; the operator
dependency from the account the request names (an `{account_id}` in the path, an
`account_id` in the JSON body, or the account of its `payment_intent_id`); and
`checkout_page_clock` from a hosted page's payment link. They are async so that the
time they set is seen by the sync route and the dependencies after them (FastAPI copies
the request's context into its thread pool). Any other request is on real time.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from billfold import clock
from billfold.accounts.service import AgentContext, authenticate_token
from billfold.api.errors import request_id_of
from billfold.api.metrics import route_template
from billfold.api.scopes import scope_of
from billfold.application.idempotent import Reply, checked_key, request_fingerprint
from billfold.application.testclock import account_clock, on_real_time
from billfold.application.usecases import Call, operator_keys
from billfold.checkout.models import CheckoutSession
from billfold.errors import ErrorCode, Forbidden, Unauthenticated
from billfold.payments.models import Payment
from billfold.services import Services

__all__ = ["Call", "Services", "request_fingerprint"]

log = logging.getLogger("billfold.api")


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def client_address(request: Request) -> str:
    """The client's address as the server saw the connection (X-Forwarded-For counts only
    when `BILLFOLD_FORWARDED_ALLOW_IPS` names the proxy: the server applies it)."""
    return request.client.host if request.client else "unknown"


_agent_bearer = HTTPBearer(auto_error=False, description="Agent access token from /auth/login")
_admin_bearer = HTTPBearer(auto_error=False, description="Operator admin key")


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated(
            "Send an access token as 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def _authenticate(services: Services, token: str) -> AgentContext:
    with services.database.read() as session:
        return authenticate_token(session, token)


async def agent_context(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_agent_bearer)],
) -> AgentContext:
    """The agent's account, and the request on its time."""
    agent = await run_in_threadpool(_authenticate, services, _bearer_token(credentials))
    request.state.account_id = agent.account_id  # for the request's log line
    if services.processor.test_mode:
        clock.use(agent.clock)
    return agent


async def _named_account(request: Request) -> tuple[str, str] | None:
    """What names the account an admin request acts on: `{account_id}` in its path, or a
    string `account_id` or `payment_intent_id` in its JSON body (kind, value)."""
    named = request.path_params.get("account_id")
    if isinstance(named, str):
        return "account_id", named
    if "json" not in request.headers.get("content-type", ""):
        return None
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    for kind in ("account_id", "payment_intent_id"):
        if isinstance(body.get(kind), str):
            return kind, body[kind]
    return None


def _clock_of_named(services: Services, kind: str, value: str) -> clock.ClockTime | None:
    account_id: str | None = value
    if kind == "payment_intent_id":
        with services.database.read() as session:
            account_id = session.scalar(select(Payment.account_id).where(Payment.id == value))
    return account_clock(services, account_id) if account_id is not None else None


async def require_operator(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """An operator key with the endpoint's scope (`api/scopes.py`), and the request on the
    time of the account it names (if any)."""
    secret = _bearer_token(credentials)
    scopes = operator_keys.remembered(services, secret)
    if scopes is None:
        scopes = await run_in_threadpool(operator_keys.authorize, services, secret)
    if scopes is None:
        raise Unauthenticated("Invalid admin key.", headers={"WWW-Authenticate": "Bearer"})
    needed = scope_of(request.method, route_template(request.scope))
    if not operator_keys.allows(scopes, needed):
        raise Forbidden(
            f"This operator key lacks the scope {needed!r}.",
            code=ErrorCode.SCOPE_MISSING,
            details={"scope": needed},
        )
    logged = services.settings.log_format == "json"
    if not services.processor.test_mode and not logged:
        return  # no test clocks: every account is on real time
    named = await _named_account(request)
    if named is None:
        return
    if named[0] == "account_id":
        request.state.account_id = named[1]  # for the request's log line
    if not services.processor.test_mode:
        return
    if named[0] == "account_id" and on_real_time(services, named[1]):
        clock.use(None)
    else:
        clock.use(await run_in_threadpool(_clock_of_named, services, *named))


def _checkout_clock(services: Services, session_id: str) -> clock.ClockTime | None:
    with services.database.read() as session:
        account_id = session.scalar(
            select(CheckoutSession.account_id).where(CheckoutSession.id == session_id)
        )
    return account_clock(services, account_id) if account_id is not None else None


async def checkout_page_clock(session_id: str, services: ServicesDep) -> None:
    """A hosted payment page runs on the time of the account its link belongs to."""
    if services.processor.test_mode:
        clock.use(await run_in_threadpool(_checkout_clock, services, session_id))


Agent = Annotated[AgentContext, Depends(agent_context)]
Operator = Depends(require_operator)


def respond(reply: Reply) -> Response:
    """A write use case's reply as the HTTP response (a replay says so in a header)."""
    headers = dict(reply.headers)
    if reply.replayed:
        headers["Idempotency-Replayed"] = "true"
    return Response(
        reply.body,
        status_code=reply.status_code,
        media_type="application/json",
        headers=headers,
    )


def _call(request: Request, key: str | None, body: bytes) -> Call:
    return call_of(
        request.method, request.url.path, request.url.query, key, body, request_id_of(request)
    )


def call_of(
    method: str, path: str, query: str, key: str | None, body: bytes, request_id: str
) -> Call:
    """A request as a use case's `Call`: the key checked (422 if malformed), the
    fingerprint of the request."""
    fingerprint = request_fingerprint(method, path, query, body)
    return Call(key=checked_key(key), fingerprint=fingerprint, request_id=request_id)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes the request safe to retry: the same key and payload replay the "
        "first response; keys are kept 24 hours.",
    ),
]


async def agent_call(request: Request, agent: Agent, key: IdempotencyKeyHeader = None) -> Call:
    return _call(request, key, await request.body())


async def operator_call(request: Request, key: IdempotencyKeyHeader = None) -> Call:
    return _call(request, key, await request.body())


# A write use case's call from an HTTP request: with the Idempotency-Key header (agent or
# operator), or `Call()` for the writes that take no key.
AgentCall = Annotated[Call, Depends(agent_call)]
OperatorCall = Annotated[Call, Depends(operator_call)]
