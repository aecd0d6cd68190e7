"""Request-scoped plumbing shared by routers: services, auth, idempotent execution."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

import simplejson
from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from billfold.accounts.service import AgentContext, authenticate_token
from billfold.api.errors import billfold_error_payload, request_id_of
from billfold.api.responses import ApiResponse, dumps, envelope
from billfold.config import Settings
from billfold.db import Database
from billfold.errors import BillfoldError, InvalidRequest, Unauthenticated
from billfold.idempotency import service as idempotency
from billfold.processors.sandbox import SandboxProcessor
from billfold.security import secret_matches

log = logging.getLogger("billfold.api")


@dataclass
class Services:
    settings: Settings
    database: Database
    processor: SandboxProcessor
    admin_key_hash: str

    @property
    def key_policy(self) -> idempotency.KeyPolicy:
        return idempotency.KeyPolicy(
            ttl=timedelta(hours=self.settings.idempotency_ttl_hours),
            lock_timeout=timedelta(seconds=self.settings.idempotency_lock_timeout_seconds),
        )


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    if services.settings.processor == "sandbox":
        from billfold.testclock.service import sync_if_stale  # the test clock builds on this

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

# What a handler returns: an HTTP status and the data to wrap in the envelope.
Outcome = tuple[int, Any]


class _KeyTaken(Exception):
    """The Idempotency-Key is already stored: undo this attempt's effect."""


class Idempotent:
    """Runs one write request at most once per Idempotency-Key (see idempotency.service)."""

    def __init__(
        self, services: Services, request: Request, scope: str | None, key: str | None, body: bytes
    ) -> None:
        self.services = services
        self.request_id = request_id_of(request)
        self.scope = scope
        self.key = key
        self.fingerprint = _fingerprint(request, body)

    def _render(self, outcome: Outcome) -> idempotency.StoredResponse:
        status, data = outcome
        return idempotency.StoredResponse(status, dumps(envelope(data)))

    def _render_error(self, exc: BillfoldError) -> idempotency.StoredResponse:
        return idempotency.StoredResponse(
            exc.status_code, dumps(billfold_error_payload(exc, self.request_id))
        )

    @staticmethod
    def _respond(
        stored: idempotency.StoredResponse, *, replayed: bool = False, headers: dict[str, str]
    ) -> Response:
        out = dict(headers)
        if replayed:
            out["Idempotency-Replayed"] = "true"
        return Response(
            stored.body,
            status_code=stored.status_code,
            media_type="application/json",
            headers=out,
        )

    def _claim(self, session: Session) -> idempotency.StoredResponse | None:
        assert self.scope is not None
        assert self.key is not None
        return idempotency.claim(
            session,
            scope=self.scope,
            key=self.key,
            fingerprint=self.fingerprint,
            policy=self.services.key_policy,
        )

    def atomic(self, handler: Callable[[Session], Outcome]) -> Response:
        """For pure database work: the effect and its stored outcome commit together.

        Fast path: run the work, then insert the completed key in the same transaction.
        A request whose key is already taken (a replay, a concurrent twin, another
        payload) loses at that insert, its effect rolls back, and it goes the careful
        way: claim first, then replay, refuse, or run and store.
        """
        database = self.services.database
        if self.key is None or self.scope is None:
            with database.transaction() as session:
                status, data = handler(session)
            return ApiResponse(envelope(data), status_code=status)
        try:
            with database.transaction() as session:
                stored = self._render(handler(session))
                if idempotency.store_completed(
                    session,
                    scope=self.scope,
                    key=self.key,
                    fingerprint=self.fingerprint,
                    response=stored,
                    policy=self.services.key_policy,
                ):
                    return self._respond(stored, headers={})
                raise _KeyTaken
        except (_KeyTaken, BillfoldError):
            pass  # errors are stored (and replays answered) by the careful path
        return self._atomic_claimed(handler)

    def _atomic_claimed(self, handler: Callable[[Session], Outcome]) -> Response:
        assert self.scope is not None
        assert self.key is not None
        with self.services.database.transaction() as session:
            replay = self._claim(session)
            if replay is not None:
                return self._respond(replay, replayed=True, headers={})
            savepoint = session.begin_nested()
            error_headers: dict[str, str] = {}
            try:
                stored = self._render(handler(session))
                savepoint.commit()
            except BillfoldError as exc:
                savepoint.rollback()
                stored = self._render_error(exc)
                error_headers = exc.headers
            idempotency.complete(session, scope=self.scope, key=self.key, response=stored)
        return self._respond(stored, headers=error_headers)

    def phased(self, handler: Callable[[], Outcome]) -> Response:
        """For work that calls the processor between its own transactions."""
        database = self.services.database
        if self.key is None or self.scope is None:
            status, data = handler()
            return ApiResponse(envelope(data), status_code=status)
        with database.transaction() as session:
            replay = self._claim(session)
        if replay is not None:
            return self._respond(replay, replayed=True, headers={})
        error_headers: dict[str, str] = {}
        try:
            stored = self._render(handler())
        except BillfoldError as exc:
            stored = self._render_error(exc)
            error_headers = exc.headers
        except BaseException:
            with database.transaction() as session:
                idempotency.release(session, scope=self.scope, key=self.key)
            raise
        with database.transaction() as session:
            idempotency.complete(session, scope=self.scope, key=self.key, response=stored)
        return self._respond(stored, headers=error_headers)


def _canonical(value: Any) -> Any:
    """Numbers as the exact decimal they denote (1, 1.0, 1.00 and 1e0 are one number)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        number = Decimal(value)
        if not number.is_finite() or number == 0:
            return Decimal(0) if number == 0 else str(number)
        # Strip trailing zeros from the coefficient by hand: normalize() would round to the
        # context's 28 digits, and expanding the exponent could make 1e999999999 a 1 GB string.
        sign, digits, exponent = number.as_tuple()
        assert isinstance(exponent, int)
        kept = len(digits)
        while digits[kept - 1] == 0:
            kept -= 1
        return Decimal((sign, digits[:kept], exponent + len(digits) - kept))
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def _canonical_body(body: bytes) -> bytes:
    if not body:
        return b""
    try:
        parsed = json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError):
        return body
    return simplejson.dumps(
        _canonical(parsed), sort_keys=True, separators=(",", ":"), use_decimal=True
    ).encode()


def request_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What "the same request" means for an Idempotency-Key: method, path, query and the
    parsed JSON body, canonical: key order, whitespace and how a number is written (1, 1.0,
    1.00, 1e0) do not matter; any other difference in the payload does."""
    digest = hashlib.sha256()
    digest.update(f"{method} {path}?{query}\n".encode())
    digest.update(_canonical_body(body))
    return digest.hexdigest()


def _fingerprint(request: Request, body: bytes) -> str:
    return request_fingerprint(request.method, request.url.path, request.url.query, body)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes the request safe to retry: the same key and payload replay the "
        "first response; keys are kept 24 hours.",
    ),
]


def _checked_key(key: str | None) -> str | None:
    if key is None:
        return None
    key = key.strip()
    if (
        not key
        or len(key) > idempotency.MAX_KEY_LENGTH
        or not (key.isascii() and key.isprintable())
    ):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {idempotency.MAX_KEY_LENGTH} printable ASCII "
            "characters.",
            details={"field": "Idempotency-Key"},
        )
    return key


async def agent_idempotency(
    request: Request, agent: Agent, services: ServicesDep, key: IdempotencyKeyHeader = None
) -> Idempotent:
    scope = f"account:{agent.account_id}"
    return Idempotent(services, request, scope, _checked_key(key), await request.body())


async def operator_idempotency(
    request: Request, services: ServicesDep, key: IdempotencyKeyHeader = None
) -> Idempotent:
    return Idempotent(services, request, "operator", _checked_key(key), await request.body())


AgentIdempotent = Annotated[Idempotent, Depends(agent_idempotency)]
OperatorIdempotent = Annotated[Idempotent, Depends(operator_idempotency)]
