"""Operator keys: named API keys with scopes, created, listed and revoked by an admin.

Creating one takes no Idempotency-Key: the answer holds the key itself, which is never
stored, not even under a key (ask again for a new one; revoke the lost one)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from billfold.api.deps import Operator, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import operator_keys
from billfold.operator_keys.schemas import (
    OperatorKeyCreatedOut,
    OperatorKeyListOut,
    OperatorKeyOut,
    OperatorKeyRequest,
)
from billfold.schemas import ERROR_RESPONSES, Envelope

router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["operator keys"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)


@router.post("/operator-keys", response_model=Envelope[OperatorKeyCreatedOut], status_code=201)
def create_operator_key(body: OperatorKeyRequest, services: ServicesDep) -> Response:
    """A new operator key with its scopes (usage:write, accounts, plans, coupons, refunds,
    webhooks, test-clocks, admin); `key` is shown here only."""
    return ok(operator_keys.create_key(services, body=body), status_code=201)


@router.get("/operator-keys", response_model=Envelope[OperatorKeyListOut])
def list_operator_keys(
    services: ServicesDep, include_revoked: bool = Query(default=False)
) -> Response:
    """The operator keys (without the keys themselves)."""
    return ok(operator_keys.list_keys(services, include_revoked=include_revoked))


@router.post("/operator-keys/{key_id}/revoke", response_model=Envelope[OperatorKeyOut])
def revoke_operator_key(key_id: str, services: ServicesDep) -> Response:
    """Revoke a key: it stops working at once in this process, within 2 s in the others."""
    return ok(operator_keys.revoke_key(services, key_id=key_id))
