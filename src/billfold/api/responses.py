"""Response rendering: the `{"data": …}` envelope with exact decimal numbers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import simplejson
from fastapi.responses import JSONResponse
from pydantic import BaseModel


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(payload: Any) -> str:
    # use_decimal writes Decimal as a JSON number literal, digit for digit.
    return simplejson.dumps(payload, use_decimal=True, default=_default, ensure_ascii=False)


class ApiResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        text = dumps(content)
        try:
            return text.encode()
        except UnicodeEncodeError:
            # A lone surrogate stored before requests refused them: answer it as the JSON
            # escape the client sent (\udfff) rather than fail every read of that row.
            return simplejson.dumps(
                content, use_decimal=True, default=_default, ensure_ascii=True
            ).encode()


def envelope(data: Any) -> dict[str, Any]:
    if isinstance(data, BaseModel):
        data = data.model_dump()
    return {"data": data}


def ok(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(envelope(data), status_code=status_code, headers=headers)
