"""Response rendering: the `{"data": …}` envelope with exact decimal numbers."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from billfold.jsonenc import dumps, envelope, render

__all__ = ["ApiResponse", "dumps", "envelope", "ok"]


class ApiResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return render(content)


def ok(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(envelope(data), status_code=status_code, headers=headers)
