"""A small async caller of the agent HTTP API: the only way the MCP tools act.

Every tool action is one agent-API request; MCP re-implements no use case. The caller
sends the bearer token, an Idempotency-Key when it has one, and reads the API's envelope:
`{"data": …}` on success, `{"error": {code, message, details, request_id}}` (plus `data`
after a declined card payment) on refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from billfold.errors import ErrorCode

__all__ = ["AGENT_PREFIX", "ApiCaller", "ApiError", "ApiReply"]

AGENT_PREFIX = "/api/agents/v1"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class ApiReply:
    """A 2xx answer: its `data`, and whether an Idempotency-Key replayed a stored answer."""

    status: int
    data: Any
    replayed: bool = False


@dataclass
class ApiError(Exception):
    """A refusal in the API's error envelope (or a transport failure, as `processor_error`
    would be: `code` is then `http_error`)."""

    status: int
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    data: Any = None

    def __post_init__(self) -> None:
        super().__init__(f"{self.code}: {self.message}")

    @property
    def decline_code(self) -> str | None:
        value = self.details.get("decline_code")
        if value is None and isinstance(self.data, dict):
            # A declined card payment also records the attempt in `data`.
            error = self.data.get("error")
            if isinstance(error, dict):
                nested = error.get("details")
                if isinstance(nested, dict):
                    value = nested.get("decline_code")
                value = value or error.get("decline_code")
        return str(value) if value is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "decline_code": self.decline_code,
            "request_id": self.request_id,
        }


class ApiCaller:
    """base_url is the server's root (`http://host:port`); paths are agent-API paths such
    as `/wallet/balance`. `transport` lets the caller reach an app in-process
    (httpx.ASGITransport) instead of over the network."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._transport = transport
        self._timeout = timeout

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ApiReply:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        async with httpx.AsyncClient(
            base_url=self.base_url + AGENT_PREFIX,
            transport=self._transport,
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=self._transport is None,
        ) as client:
            try:
                response = await client.request(
                    method, path, params=params, json=json, headers=headers
                )
            except httpx.HTTPError as exc:
                raise ApiError(
                    status=503,
                    code=ErrorCode.HTTP_ERROR.value,
                    message=f"The Billfold API at {self.base_url} could not be reached: {exc}",
                ) from exc
        return _read(response)


def _read(response: httpx.Response) -> ApiReply:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict) and "data" in body:
        replayed = response.headers.get("idempotency-replayed", "").lower() == "true"
        return ApiReply(status=response.status_code, data=body["data"], replayed=replayed)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "code" in error:
        details = error.get("details")
        raise ApiError(
            status=response.status_code,
            code=str(error["code"]),
            message=str(error.get("message", "")),
            details=details if isinstance(details, dict) else {},
            request_id=error.get("request_id"),
            data=body.get("data") if isinstance(body, dict) else None,
        )
    raise ApiError(
        status=response.status_code,
        code=ErrorCode.HTTP_ERROR.value,
        message=f"Unexpected answer from the API (HTTP {response.status_code}).",
        details={"body": response.text[:500]},
    )
