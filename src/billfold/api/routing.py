"""Routes whose JSON bodies are parsed without floats.

Starlette's `Request.json()` turns `49.99` into a float; Billfold parses numbers as
`Decimal` and refuses NaN/Infinity literals, so money never passes through binary
floating point.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a valid JSON number", name, 0)


def _refuse_nul(value: Any) -> None:
    """NUL cannot be stored in PostgreSQL text and has no business in Billfold's strings."""
    if isinstance(value, str):
        if "\x00" in value:
            raise json.JSONDecodeError("strings must not contain NUL characters", value, 0)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key)
            _refuse_nul(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_nul(item)


class DecimalJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            parsed = json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
            _refuse_nul(parsed)
            self._json = parsed
        return self._json


class DecimalJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(DecimalJSONRequest(request.scope, request.receive))

        return route_handler
