"""Run one write at most once per idempotency key, for any front end.

A use case is either atomic (pure database work: its effect and the stored reply commit
together) or phased (it calls the processor between its own transactions). Both return
an `Outcome`, (status, data); the runner stores the rendered reply under the key and
answers replays with it byte for byte. Errors raised as `BillfoldError` are stored too, so
a retry of a refused request gets the same refusal. Front ends turn the `Reply` into their
own response (HTTP, an MCP tool result, CLI output).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

import simplejson
from simplejson.encoder import encode_basestring_ascii
from sqlalchemy.orm import Session

from billfold.errors import RETRY_LATER, BillfoldError, InvalidRequest, error_payload
from billfold.idempotency import service as idempotency
from billfold.jsonenc import envelope, render
from billfold.services import Services

# What a use case returns: a status (HTTP's numbers) and the data to wrap in the envelope.
Outcome = tuple[int, Any]


@dataclass(frozen=True)
class Reply:
    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


class _KeyTaken(Exception):
    """The idempotency key is already stored: undo this attempt's effect."""


def operator_scope() -> str:
    return "operator"


def account_scope(account_id: str) -> str:
    return f"account:{account_id}"


def checked_key(key: str | None, *, field_name: str = "Idempotency-Key") -> str | None:
    """A client's idempotency key, trimmed; 422 unless 1 to 255 printable ASCII characters."""
    if key is None:
        return None
    key = key.strip()
    if (
        not key
        or len(key) > idempotency.MAX_KEY_LENGTH
        or not (key.isascii() and key.isprintable())
    ):
        raise InvalidRequest(
            f"{field_name} must be 1 to {idempotency.MAX_KEY_LENGTH} printable ASCII characters.",
            details={"field": field_name},
        )
    return key


class Idempotent:
    """One write request's run: at most once per (scope, key); no key means just run it."""

    def __init__(
        self,
        services: Services,
        *,
        scope: str | None,
        key: str | None,
        fingerprint: str,
        request_id: str = "",
    ) -> None:
        self.services = services
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint
        self.request_id = request_id

    @staticmethod
    def _render(outcome: Outcome) -> idempotency.StoredResponse:
        status, data = outcome
        return idempotency.StoredResponse(status, render(envelope(data)).decode())

    def _render_error(self, exc: BillfoldError) -> idempotency.StoredResponse:
        return idempotency.StoredResponse(
            exc.status_code, render(error_payload(exc, self.request_id)).decode()
        )

    @staticmethod
    def _reply(
        stored: idempotency.StoredResponse,
        *,
        replayed: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return Reply(stored.status_code, stored.body.encode(), dict(headers or {}), replayed)

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

    def atomic(self, handler: Callable[[Session], Outcome]) -> Reply:
        """For pure database work: the effect and its stored outcome commit together.

        Fast path: run the work, then insert the completed key in the same transaction.
        A request whose key is already taken (a replay, a concurrent twin, another
        payload) loses at that insert, its effect rolls back, and it goes the careful
        way: claim first, then replay, refuse, or run and store.
        """
        database = self.services.database
        if self.key is None or self.scope is None:
            with database.transaction() as session:
                return self._reply(self._render(handler(session)))
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
                    return self._reply(stored)
                raise _KeyTaken
        except (_KeyTaken, BillfoldError):
            pass  # errors are stored (and replays answered) by the careful path
        return self._atomic_claimed(handler)

    def _atomic_claimed(self, handler: Callable[[Session], Outcome]) -> Reply:
        assert self.scope is not None
        assert self.key is not None
        with self.services.database.transaction() as session:
            replay = self._claim(session)
            if replay is not None:
                return self._reply(replay, replayed=True)
            savepoint = session.begin_nested()
            error_headers: dict[str, str] = {}
            try:
                stored = self._render(handler(session))
                savepoint.commit()
            except BillfoldError as exc:
                savepoint.rollback()
                stored = self._render_error(exc)
                error_headers = exc.headers
                if exc.code in RETRY_LATER:  # not kept: the same request may come again
                    idempotency.release(session, scope=self.scope, key=self.key)
                    return self._reply(stored, headers=error_headers)
            idempotency.complete(session, scope=self.scope, key=self.key, response=stored)
        return self._reply(stored, headers=error_headers)

    def phased(self, handler: Callable[[], Outcome]) -> Reply:
        """For work that calls the processor between its own transactions."""
        database = self.services.database
        if self.key is None or self.scope is None:
            return self._reply(self._render(handler()))
        with database.transaction() as session:
            replay = self._claim(session)
        if replay is not None:
            return self._reply(replay, replayed=True)
        error_headers: dict[str, str] = {}
        retry_later = False
        try:
            stored = self._render(handler())
        except BillfoldError as exc:
            stored = self._render_error(exc)
            error_headers = exc.headers
            retry_later = exc.code in RETRY_LATER  # not kept: the same request may come again
        except BaseException:
            with database.transaction() as session:
                idempotency.release(session, scope=self.scope, key=self.key)
            raise
        with database.transaction() as session:
            if retry_later:
                idempotency.release(session, scope=self.scope, key=self.key)
            else:
                idempotency.complete(session, scope=self.scope, key=self.key, response=stored)
        return self._reply(stored, headers=error_headers)


def _canonical(value: Any) -> Any:
    """Numbers as the exact decimal they denote (1, 1.0, 1.00 and 1e0 are one number). A
    float (a number as `json.loads` parses it without parse_float) counts as the decimal
    its JSON text denotes; one that is not finite (NaN, Infinity) stays as it is, as
    `_canonical_body`'s parse leaves it."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is dict:
        return {key: _canonical(item) for key, item in value.items()}
    if kind is int or (kind is Decimal and value.is_finite()):
        return _canonical_number(value)
    if isinstance(value, float):
        return _canonical_number(Decimal(repr(value))) if math.isfinite(value) else value
    if isinstance(value, int | Decimal):  # a subclass, or a Decimal NaN or infinity
        number = Decimal(value)
        return _canonical_number(number) if number.is_finite() else str(number)
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


@lru_cache(maxsize=4096)
def _canonical_number(value: int | Decimal) -> Decimal:
    """A finite number's canonical decimal (a function of its value alone, so equal
    numbers, 1 and 1.0 included, may share a cached result: a batch repeats its amounts)."""
    number = Decimal(value)
    if number == 0:
        return Decimal(0)
    # Strip trailing zeros from the coefficient by hand: normalize() would round to the
    # context's 28 digits, and expanding the exponent could make 1e999999999 a 1 GB string.
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    kept = len(digits)
    while digits[kept - 1] == 0:
        kept -= 1
    return Decimal((sign, digits[:kept], exponent + len(digits) - kept))


def _canonical_body(body: bytes) -> bytes:
    if not body:
        return b""
    try:
        parsed = json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError):
        return body
    return _canonical_text(_canonical(parsed))


def payload_fingerprint(method: str, path: str, query: str, payload: Any) -> str:
    """`request_fingerprint` of a request whose body is `payload` rendered (`render`), from
    the payload as parsed (floats and all): a batch item's, without rendering and parsing
    it again."""
    digest = hashlib.sha256()
    digest.update(f"{method} {path}?{query}\n".encode())
    digest.update(_canonical_text(_canonical(payload)))
    return digest.hexdigest()


_CANONICAL_JSON = simplejson.JSONEncoder(
    sort_keys=True, separators=(",", ":"), use_decimal=True, allow_nan=False
)
_PLAIN_JSON = {None: "null", True: "true", False: "false"}


def _canonical_text(canonical: Any) -> bytes:
    """The canonical value as compact JSON with sorted keys. A flat object of strings and
    numbers (any usage charge's) is written here, as the encoder would, at a third of its
    cost; anything else by the encoder."""
    if type(canonical) is dict:
        fields = []
        for key in sorted(canonical):
            value = canonical[key]
            if type(value) is str:
                text = encode_basestring_ascii(value)
            elif type(value) is Decimal:
                text = str(value)
            elif value is None or type(value) is bool:
                text = _PLAIN_JSON[value]
            else:
                break
            fields.append(f"{encode_basestring_ascii(key)}:{text}")
        else:
            return ("{" + ",".join(fields) + "}").encode()
    encoded: str = _CANONICAL_JSON.encode(canonical)
    return encoded.encode()


def request_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What "the same request" means for an idempotency key: method, path, query and the
    parsed JSON body, canonical: key order, whitespace and how a number is written (1, 1.0,
    1.00, 1e0) do not matter; any other difference in the payload does. Front ends other
    than HTTP name their operation as the path (e.g. `POST /wallet/fund` for an MCP tool)."""
    digest = hashlib.sha256()
    digest.update(f"{method} {path}?{query}\n".encode())
    digest.update(_canonical_body(body))
    return digest.hexdigest()


__all__ = [
    "Idempotent",
    "Outcome",
    "Reply",
    "account_scope",
    "checked_key",
    "operator_scope",
    "payload_fingerprint",
    "request_fingerprint",
]
