"""The SDK's one definition of every call, run by a sync or an async driver.

An endpoint is declared once, as a method that describes its request (`Call`) under
`@endpoint(METHOD, PATH)`; a helper that makes several calls is a generator under
`@program` that `yield from`s other endpoints. Either way the method body builds a
*program*: a generator of steps (`Send` an HTTP request, `Sleep`, `Notify` a callback)
that does everything else itself (Idempotency-Key, retries with backoff, parsing, typed
errors). The `Method` descriptor then hands the program to the class's driver: `SyncCore`
runs it on an `httpx.Client` and returns the result, `AsyncCore` on an
`httpx.AsyncClient` and returns a coroutine. So `Billfold` and `AsyncBillfold` share every
method and differ only in how a step is carried out.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Self,
    TypeAlias,
    TypeVar,
    overload,
)
from urllib.parse import quote, urlencode

import anyio
import httpx

from billfold.client.errors import (
    APIConnectionError,
    BillfoldError,
    RateLimited,
    ServerError,
    error_class,
    from_status,
)
from billfold.errors import ErrorCode

P = ParamSpec("P")
T = TypeVar("T")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Transport failures worth another try: the request may not have arrived, or its answer
# was lost. The Idempotency-Key makes the retry safe either way.
RETRYABLE_TRANSPORT: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
USER_AGENT = "billfold-python"


def new_idempotency_key() -> str:
    return f"bf-sdk-{uuid.uuid4()}"


# --- the steps a program yields --------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Make one HTTP request; the driver sends back the `httpx.Response` or throws the
    transport exception into the program."""

    method: str
    url: str
    headers: Mapping[str, str]
    params: Mapping[str, str] | None = None
    content: bytes | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Notify:
    """Call a caller's callback (awaited by the async driver if it returns an awaitable)."""

    callback: Callable[[Any], object]
    argument: Any


Step: TypeAlias = Send | Sleep | Notify
Program: TypeAlias = Generator[Step, Any, T]


# --- a request's description -----------------------------------------------------------


@dataclass(frozen=True)
class Call(Generic[T]):
    """What an endpoint method says about its request; the route comes from `@endpoint`.

    `parse` turns the answer's `data` (kind "envelope"), the processor's JSON ("processor")
    or the body's bytes ("raw") into the result.
    """

    parse: Callable[[Any], T]
    path_params: Mapping[str, str | int] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    json: Mapping[str, Any] | None = None
    form: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    url: str | None = None  # an absolute URL instead of the API prefix and path
    basic_auth: tuple[str, str] | None = None  # instead of the bearer credential
    anonymous: bool = False  # no credential at all
    kind: Literal["envelope", "processor", "raw"] = "envelope"


def body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the fields given, leaving out those that are None."""
    return {name: value for name, value in fields.items() if value is not None}


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        # The API takes an amount as a plain decimal string too: exact, never a float.
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _query_value(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def decimal_json(text: str | bytes) -> Any:
    """JSON with every non-integer number as a Decimal: money stays exact."""
    return json.loads(text, parse_float=Decimal)


# --- the client state every driver has -------------------------------------------------


class ClientBase:
    """Configuration shared by the sync and async clients (and read by every program)."""

    _prefix: ClassVar[str] = ""

    base_url: str
    credential: str | None
    max_retries: int
    backoff_base: float
    backoff_cap: float
    max_retry_wait: float

    def _configure(
        self,
        base_url: str,
        credential: str | None,
        *,
        max_retries: int,
        backoff_base: float,
        backoff_cap: float,
        max_retry_wait: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_wait = max_retry_wait

    def backoff(self, attempt: int) -> float:
        """Exponential backoff: base, 2 * base, 4 * base, ... capped (attempt counts from 0)."""
        return float(min(self.backoff_cap, self.backoff_base * (2**attempt)))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def retry_delay(
    client: ClientBase, attempt: int, error: BillfoldError, wait: float | None
) -> float | None:
    """How long to wait before retrying a refused request, None to not retry it: only 5xx,
    429 and 409 idempotency_request_in_progress are retried (with the server's Retry-After
    when it sends one, unless it asks for more than `max_retry_wait`)."""
    if attempt >= client.max_retries:
        return None
    in_progress = error.code == ErrorCode.IDEMPOTENCY_REQUEST_IN_PROGRESS
    if not (isinstance(error, ServerError | RateLimited) or in_progress):
        return None
    if wait is None:
        return client.backoff(attempt)
    return wait if wait <= client.max_retry_wait else None


def error_from(response: httpx.Response, kind: str) -> BillfoldError:
    """The typed exception of a refusal (Billfold's envelope, or the processor's)."""
    status = response.status_code
    headers = dict(response.headers.items())
    try:
        payload = decimal_json(response.content)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        text = response.text[:200] or response.reason_phrase
        return from_status(status)("http_error", text, {}, status, headers=headers)
    if kind == "processor":
        return _processor_error(status, error, headers)
    code = str(error.get("code") or "http_error")
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    return error_class(code, status)(
        code,
        str(error.get("message") or ""),
        details,
        status,
        error.get("request_id"),
        data=payload.get("data") if isinstance(payload, dict) else None,
        headers=headers,
    )


def _processor_error(status: int, error: dict[str, Any], headers: dict[str, str]) -> BillfoldError:
    """A Stripe-style error (`{"error": {type, code, decline_code, message, param}}`)."""
    code = str(error.get("code") or error.get("type") or "processor_error")
    details = {k: v for k, v in error.items() if k not in {"message"} and v is not None}
    if status == 402 or error.get("type") == "card_error":
        cls: type[BillfoldError] = error_class(ErrorCode.CARD_DECLINED)
    else:
        cls = from_status(status)
    return cls(code, str(error.get("message") or ""), details, status, headers=headers)


def perform(client: ClientBase, method: str, path: str, call: Call[T]) -> Program[T]:
    """One request as a program: one Idempotency-Key for a write (the caller's or a new
    uuid4 one) kept across retries; retries on transport failures, 5xx, 429 and 409
    idempotency_request_in_progress, with exponential backoff; a typed result or error."""
    if call.url is not None:
        url = call.url
    else:
        quoted = {k: quote(str(v), safe="") for k, v in call.path_params.items()}
        url = client.base_url + client._prefix + path.format(**quoted)
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if call.basic_auth is not None:
        headers["Authorization"] = httpx.BasicAuth(*call.basic_auth)._auth_header
    elif not call.anonymous and client.credential:
        headers["Authorization"] = f"Bearer {client.credential}"
    content: bytes | None = None
    if call.json is not None:
        headers["Content-Type"] = "application/json"
        content = json.dumps(call.json, default=_json_default).encode()
    elif call.form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        content = urlencode({k: _query_value(v) for k, v in call.form.items()}).encode()
    if method in WRITE_METHODS:
        headers["Idempotency-Key"] = call.idempotency_key or new_idempotency_key()
    params = (
        {k: _query_value(v) for k, v in call.params.items() if v is not None}
        if call.params
        else None
    )
    attempt = 0
    while True:
        delay: float | None
        try:
            response: httpx.Response = yield Send(method, url, headers, params, content)
        except RETRYABLE_TRANSPORT as exc:
            if attempt >= client.max_retries:
                raise APIConnectionError(
                    "connection_error", f"{method} {url}: {type(exc).__name__}: {exc}"
                ) from exc
            delay = client.backoff(attempt)
        else:
            if response.is_success:
                return _parse(call, response)
            error = error_from(response, call.kind)
            delay = retry_delay(client, attempt, error, _retry_after(response))
            if delay is None:
                raise error
        attempt += 1
        yield Sleep(delay)


def _parse(call: Call[T], response: httpx.Response) -> T:
    if call.kind == "raw":
        return call.parse(response.content)
    payload = decimal_json(response.content)
    if call.kind == "processor":
        return call.parse(payload)
    return call.parse(payload["data"])


# --- declaring methods -----------------------------------------------------------------


class Planner:
    """A view of a client whose methods answer programs instead of running them, for
    helpers that compose endpoints (`yield from self._plan.get_wallet_balance()`)."""

    def __init__(self, client: ClientBase) -> None:
        self.client = client


class Method(Generic[P, T]):
    """A client method, defined once: `run(client, *args)` builds its program."""

    def __init__(
        self,
        run: Callable[Concatenate[Any, P], Program[T]],
        source: Callable[..., Any],
        route: tuple[str, str] | None = None,
    ) -> None:
        self._run = run
        self.route = route
        self.name = source.__name__
        self.__doc__ = source.__doc__
        self.__wrapped__ = source

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self, obj: SyncCore, owner: type[Any] | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, obj: AsyncCore, owner: type[Any] | None = None
    ) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __get__(self, obj: Planner, owner: type[Any] | None = None) -> Callable[P, Program[T]]: ...
    def __get__(self, obj: object, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self
        run = self._run
        bound: Callable[..., Any]
        if isinstance(obj, Planner):
            client = obj.client

            def bound(*args: Any, **kwargs: Any) -> Program[T]:
                return run(client, *args, **kwargs)

        elif isinstance(obj, AsyncCore):
            async_client = obj

            async def bound(*args: Any, **kwargs: Any) -> T:
                return await async_client.drive(run(async_client, *args, **kwargs))

        elif isinstance(obj, SyncCore):
            sync_client = obj

            def bound(*args: Any, **kwargs: Any) -> T:
                return sync_client.drive(run(sync_client, *args, **kwargs))

        else:
            raise TypeError(f"{self.name} needs a Billfold client, not {type(obj).__name__}")
        functools.update_wrapper(bound, self.__wrapped__)
        return bound


def route(
    method: str, path: str
) -> Callable[[Callable[Concatenate[Any, P], Call[T]]], Method[P, T]]:
    """Declare an endpoint: the decorated method returns its `Call`; the route is here."""

    def decorate(build: Callable[Concatenate[Any, P], Call[T]]) -> Method[P, T]:
        def run(client: Any, *args: P.args, **kwargs: P.kwargs) -> Program[T]:
            return perform(client, method, path, build(client, *args, **kwargs))

        return Method(run, build, (method, path))

    return decorate


def program(fn: Callable[Concatenate[Any, P], Program[T]]) -> Method[P, T]:
    """Declare a helper: a generator method composing other methods' programs."""
    return Method(fn, fn)


def program_for(
    method: str, path: str
) -> Callable[[Callable[Concatenate[Any, P], Program[T]]], Method[P, T]]:
    """A helper that is the SDK's method for a route (it does more than one request)."""

    def decorate(fn: Callable[Concatenate[Any, P], Program[T]]) -> Method[P, T]:
        return Method(fn, fn, (method, path))

    return decorate


def routes_of(cls: type[ClientBase]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(METHOD, full path) → the names of the methods of `cls` that call it."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for name, method in iter_methods(cls):
        if method.route is not None:
            key = (method.route[0], cls._prefix + method.route[1])
            found[key] = (*found.get(key, ()), name)
    return found


# --- the drivers -----------------------------------------------------------------------


class SyncCore(ClientBase):
    """Runs programs on an `httpx.Client`: methods return their results."""

    def __init__(
        self,
        base_url: str,
        credential: str | None,
        *,
        timeout: float = 30,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_retry_wait: float = 60.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._configure(
            base_url,
            credential,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_retry_wait=max_retry_wait,
        )
        self._http = http_client or httpx.Client(timeout=timeout, transport=transport)
        self._owns_http = http_client is None

    def drive(self, program: Program[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = program.send(value) if error is None else program.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            try:
                if isinstance(step, Send):
                    value = self._http.request(
                        step.method,
                        step.url,
                        headers=dict(step.headers),
                        params=step.params,
                        content=step.content,
                    )
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                else:
                    step.callback(step.argument)
            except Exception as exc:  # handed to the program, which decides
                error = exc

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncCore(ClientBase):
    """Runs programs on an `httpx.AsyncClient`: methods return coroutines."""

    def __init__(
        self,
        base_url: str,
        credential: str | None,
        *,
        timeout: float = 30,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_retry_wait: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._configure(
            base_url,
            credential,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_retry_wait=max_retry_wait,
        )
        self._http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)
        self._owns_http = http_client is None

    async def drive(self, program: Program[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = program.send(value) if error is None else program.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            try:
                if isinstance(step, Send):
                    value = await self._http.request(
                        step.method,
                        step.url,
                        headers=dict(step.headers),
                        params=step.params,
                        content=step.content,
                    )
                elif isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                else:
                    outcome = step.callback(step.argument)
                    if inspect.isawaitable(outcome):
                        await outcome
            except Exception as exc:  # handed to the program, which decides
                error = exc

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def iter_methods(cls: type[Any]) -> Iterator[tuple[str, Method[Any, Any]]]:
    """Every SDK method of `cls` (endpoints and helpers), by name."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if isinstance(value, Method) and name not in seen:
                seen.add(name)
                yield name, value
