"""The one place errors become the envelope: {"error": {code, message, details, request_id}}."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from billfold.api.responses import ApiResponse
from billfold.db import conflict, unavailable
from billfold.errors import (
    BillfoldError,
    ErrorCode,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    catalogue_json,
    error_body,
    error_payload,
)
from billfold.payments.service import CardDeclined
from billfold.processors.base import CardError, UnknownPaymentMethod
from billfold.processors.cards import InvalidCard
from billfold.services import Services
from billfold.wallet.usage import NotWritten

log = logging.getLogger("billfold.api")

_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


def request_id_of(request: Request) -> str:
    return scope_request_id(request.scope)


def scope_request_id(scope: Scope) -> str:
    """The id `RequestContext` gave the request (for pure ASGI code without a Request)."""
    return str(scope.get("state", {}).get("request_id", ""))


def billfold_error_response(exc: BillfoldError, request_id: str) -> ApiResponse:
    return ApiResponse(
        error_payload(exc, request_id), status_code=exc.status_code, headers=exc.headers
    )


def unavailable_response(request_id: str, retry_after_seconds: int) -> ApiResponse:
    """503 service_unavailable with Retry-After: the database is out of reach for now."""
    return billfold_error_response(ServiceUnavailable(retry_after_seconds), request_id)


def error_response(
    request: Request | None,
    exc: Exception,
    request_id: str,
    services: Services | None = None,
) -> ApiResponse:
    """An exception no use case turned into a refusal: 503 if it says the database is out
    of reach (logged as a warning), else 500 internal_error (a bug, logged with its
    traceback)."""
    if unavailable(exc):
        if conflict(exc):
            log.error("request %s: deadlock or serialization failure", request_id, exc_info=exc)
        else:
            log.warning("request %s: database unavailable: %s", request_id, _first_line(exc))
        if services is None and request is not None:
            services = getattr(request.app.state, "services", None)
        retry_after = services.settings.retry_after_seconds if services is not None else 1
        return unavailable_response(request_id, retry_after)
    log.error("unhandled error in request %s", request_id, exc_info=exc)
    return ApiResponse(
        error_body(ErrorCode.INTERNAL_ERROR, "An internal error occurred.", {}, request_id),
        status_code=500,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def processor_refusal(exc: Exception) -> BillfoldError:
    """The envelope error for a processor exception (an unknown card, a refused card)."""
    if isinstance(exc, CardError):
        return CardDeclined(
            exc.message, details={"decline_code": exc.decline_code, "reason": exc.code}
        )
    if isinstance(exc, InvalidCard):
        return InvalidRequest(
            exc.message, code=ErrorCode.INVALID_CARD, details={"field": exc.param}
        )
    return NotFound("No such payment method.", code=ErrorCode.PAYMENT_METHOD_NOT_FOUND)


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in location]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_details(exc: RequestValidationError) -> tuple[str, dict[str, Any]]:
    errors = []
    for error in exc.errors():
        location = error.get("loc", ())
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            reason = str((error.get("ctx") or {}).get("error") or message)
            return f"The request body is not valid JSON: {reason}.", {
                "errors": [{"field": "body", "message": reason}],
                "field": "body",
            }
        message = message.removeprefix("Value error, ")
        errors.append(
            {
                "field": _field_name(location),
                "location": str(location[0]) if location else "",
                "message": message,
            }
        )
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return f"{first['field']}: {first['message']}", {"errors": errors, "field": first["field"]}


def publish_catalogue(app: FastAPI) -> None:
    """The OpenAPI document lists the error catalogue under `x-error-catalogue`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema["x-error-catalogue"] = catalogue_json()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    publish_catalogue(app)

    @app.exception_handler(BillfoldError)
    async def _billfold(request: Request, exc: BillfoldError) -> ApiResponse:
        return billfold_error_response(exc, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ApiResponse:
        message, details = _validation_details(exc)
        return ApiResponse(
            error_body(ErrorCode.INVALID_REQUEST, message, details, request_id_of(request)),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ApiResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # A body that is not even UTF-8: the same answer as malformed JSON.
            return ApiResponse(
                error_body(
                    ErrorCode.INVALID_REQUEST,
                    "The request body is not valid JSON.",
                    {
                        "errors": [{"field": "body", "message": "not valid UTF-8 JSON"}],
                        "field": "body",
                    },
                    request_id_of(request),
                ),
                status_code=422,
            )
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = "No such endpoint."
        return ApiResponse(
            error_body(code, message, {}, request_id_of(request)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(UnknownPaymentMethod)
    @app.exception_handler(CardError)
    @app.exception_handler(InvalidCard)
    async def _processor(request: Request, exc: Exception) -> ApiResponse:
        # Use cases map the processor's refusals where they call it; one that slips
        # through is still the client's card problem, never a 500.
        log.warning("processor refusal reached the API unmapped: %r", exc)
        return billfold_error_response(processor_refusal(exc), request_id_of(request))

    # Database errors (and the usage writer's, which carry them as their cause) are
    # answered here, in the router, so an outage's 503s are not re-raised as crashes.
    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(psycopg.Error)
    @app.exception_handler(NotWritten)
    async def _database(request: Request, exc: Exception) -> ApiResponse:
        return error_response(request, exc, request_id_of(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ApiResponse:
        return error_response(request, exc, request_id_of(request))
