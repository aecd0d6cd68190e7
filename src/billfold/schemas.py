"""Shared schema pieces: strict request models and the documented response envelope."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from billfold.errors import ErrorCode

T = TypeVar("T")

# Plans are numbered by the database (a 32-bit integer key): a larger id names no plan.
PlanId = Annotated[int, Field(ge=1, le=2_147_483_647)]


class RequestModel(BaseModel):
    """Request bodies refuse unknown fields: a misspelled field must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(BaseModel):
    """A response's shape, built from the view a service renders (`model_validate(view)`).

    A key the view writes and the model does not declare fails loudly instead of vanishing,
    and the fields are declared in the view's order: the model renders the bytes the view
    would have, and clients see the same JSON whichever way it is produced.
    """

    model_config = ConfigDict(extra="forbid")


class Envelope(BaseModel, Generic[T]):
    data: T


class ErrorObject(BaseModel):
    code: ErrorCode = Field(description="Stable error code; see x-error-catalogue.")
    message: str
    details: dict[str, object]
    request_id: str


class ErrorEnvelope(BaseModel):
    error: ErrorObject


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in {
        401: "Missing, invalid, expired or revoked token",
        404: "No such object (or not this account's)",
        409: "Conflict, or the same Idempotency-Key is still in progress",
        422: "Invalid request, or an Idempotency-Key reused with another payload",
    }.items()
}
