"""Request and response shapes of accounts and auth."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import EmailStr, Field

from billfold.schemas import RequestModel, ResponseModel

ExpiresIn = Literal["1_week", "1_month", "3_months", "never"]


class LoginRequest(RequestModel):
    email: EmailStr
    password: str = Field(min_length=1, max_length=1024)
    expires_in: ExpiresIn = "1_month"


class TokenOut(ResponseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth token type
    expires_at: datetime | None
    account_id: str


class CreateAccountRequest(RequestModel):
    email: EmailStr
    password: str = Field(min_length=8, max_length=1024)
    currency: Literal["USD", "EUR", "GBP"] = "USD"
    test_clock_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        description="Sandbox only: the test clock the account lives on (real time if none).",
    )


class IssueTokenRequest(RequestModel):
    expires_in: ExpiresIn = "1_month"


class AccountOut(ResponseModel):
    id: str
    email: str
    status: str
    currency: str
    test_clock_id: str | None = None
    created_at: datetime


class AccountPage(ResponseModel):
    items: list[AccountOut]
    total: int
    limit: int
    offset: int
    has_more: bool


class RevokedTokenOut(ResponseModel):
    revoked: bool
