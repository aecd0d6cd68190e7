"""Operator keys over the API."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from billfold.schemas import RequestModel, ResponseModel
from billfold.text import CleanText


class OperatorKeyRequest(RequestModel):
    name: CleanText = Field(min_length=1, max_length=200)
    # usage:write, accounts, plans, coupons, refunds, webhooks, test-clocks, admin
    scopes: list[str] = Field(min_length=1, max_length=8)


class OperatorKeyOut(ResponseModel):
    id: str
    name: str
    key_prefix: str  # the key's first characters, to tell keys apart
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class OperatorKeyCreatedOut(OperatorKeyOut):
    key: str  # the key itself: shown once, here, never again


class OperatorKeyListOut(ResponseModel):
    items: list[OperatorKeyOut]
