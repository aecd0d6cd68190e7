"""Request-scoped plumbing shared by routers: services, auth, idempotent execution."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from billfold.accounts.service import AgentContext, authenticate_token
from billfold.api.errors import request_id_of
from billfold.application import idempotent
from billfold.application.idempotent import (
    Outcome,
    account_scope,
    checked_key,
    operator_scope,
    request_fingerprint,
)
from billfold.application.usecases import Call
from billfold.errors import Unauthenticated
from billfold.security import secret_matches
from billfold.services import Services
from billfold.testclock.service import sync_if_stale

__all__ = ["Call", "Outcome", "Services", "request_fingerprint"]

log = logging.getLogger("billfold.api")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    if services.settings.processor == "sandbox":
        sync_if_stale(services.database)
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


def agent_context(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_agent_bearer)],
) -> AgentContext:
    token = _bearer_token(credentials)
    with services.database.read() as session:
        return authenticate_token(session, token)


def require_operator(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    if not secret_matches(_bearer_token(credentials), services.admin_key_hash):
        raise Unauthenticated("Invalid admin key.", headers={"WWW-Authenticate": "Bearer"})


Agent = Annotated[AgentContext, Depends(agent_context)]
Operator = Depends(require_operator)


class Idempotent:
    """The HTTP face of `application.idempotent.Idempotent`: same calls, answers a Response."""

    def __init__(self, run: idempotent.Idempotent) -> None:
        self.run = run

    @property
    def key(self) -> str | None:
        return self.run.key

    def atomic(self, handler: Callable[[Session], Outcome]) -> Response:
        return respond(self.run.atomic(handler))

    def phased(self, handler: Callable[[], Outcome]) -> Response:
        return respond(self.run.phased(handler))


def respond(reply: idempotent.Reply) -> Response:
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
    """The request as a use case's `Call`: the key checked, the fingerprint of the request."""
    fingerprint = request_fingerprint(request.method, request.url.path, request.url.query, body)
    return Call(key=checked_key(key), fingerprint=fingerprint, request_id=request_id_of(request))


def _run(
    services: Services, request: Request, scope: str, key: str | None, body: bytes
) -> Idempotent:
    call = _call(request, key, body)
    return Idempotent(
        idempotent.Idempotent(
            services,
            scope=scope,
            key=call.key,
            fingerprint=call.fingerprint,
            request_id=call.request_id,
        )
    )


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes the request safe to retry: the same key and payload replay the "
        "first response; keys are kept 24 hours.",
    ),
]


async def agent_idempotency(
    request: Request, agent: Agent, services: ServicesDep, key: IdempotencyKeyHeader = None
) -> Idempotent:
    return _run(services, request, account_scope(agent.account_id), key, await request.body())


async def operator_idempotency(
    request: Request, services: ServicesDep, key: IdempotencyKeyHeader = None
) -> Idempotent:
    return _run(services, request, operator_scope(), key, await request.body())


AgentIdempotent = Annotated[Idempotent, Depends(agent_idempotency)]
OperatorIdempotent = Annotated[Idempotent, Depends(operator_idempotency)]


async def agent_call(request: Request, agent: Agent, key: IdempotencyKeyHeader = None) -> Call:
    return _call(request, key, await request.body())


async def operator_call(request: Request, key: IdempotencyKeyHeader = None) -> Call:
    return _call(request, key, await request.body())


# A write use case's call from an HTTP request: with the Idempotency-Key header (agent or
# operator), or `Call()` for the writes that take no key.
AgentCall = Annotated[Call, Depends(agent_call)]
OperatorCall = Annotated[Call, Depends(operator_call)]
