"""Routes whose JSON bodies are parsed without floats.

Starlette's `Request.json()` turns `49.99` into a float; Billfold parses numbers as
`Decimal` and refuses NaN/Infinity literals, so money never passes through binary
floating point. Strings that could not be stored and read back (NUL, lone surrogates) are
refused here, for every body field, before any model sees them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from billfold.text import unstorable_reason


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a valid JSON number", name, 0)


def _refuse_unstorable(value: Any) -> None:
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            reason = unstorable_reason(item)
            if reason is not None:
                raise json.JSONDecodeError(reason, "", 0)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


# Where a string that cannot be stored could come from: an escape (\\u0000, \\udfff) or
# a surrogate's bytes (json.loads decodes bytes with surrogatepass). A raw NUL is not valid
# JSON. A body without any of them needs no walk through its strings.
_MAYBE_UNSTORABLE = re.compile(rb"\\u|\xed[\xa0-\xbf]|\x00")


def parse_json_body(body: bytes) -> Any:
    """A request body as Billfold reads JSON: numbers as Decimal, no NaN/Infinity, no
    string that could not be stored (ValueError otherwise)."""
    parsed = json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    if _MAYBE_UNSTORABLE.search(body):
        _refuse_unstorable(parsed)
    return parsed


class DecimalJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


class DecimalJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(DecimalJSONRequest(request.scope, request.receive))

        return route_handler
