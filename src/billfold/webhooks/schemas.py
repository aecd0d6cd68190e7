"""Request and response shapes of webhook endpoints and deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, field_validator

from billfold.schemas import RequestModel, ResponseModel
from billfold.webhooks.service import EVENT_TYPES

Url = Annotated[str, Field(min_length=8, max_length=2000)]


def _event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - EVENT_TYPES - {"*"})
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)} or '*'")
    if not value:
        raise ValueError("give at least one event type, or '*' for all")
    return sorted(set(value))


class CreateEndpoint(RequestModel):
    url: Url
    event_types: list[str] = Field(default_factory=lambda: ["*"], max_length=50)
    enabled: bool = True

    _types = field_validator("event_types")(_event_types)


class UpdateEndpoint(RequestModel):
    url: Url | None = None
    event_types: list[str] | None = Field(default=None, max_length=50)
    enabled: bool | None = None

    _types = field_validator("event_types")(_event_types)


class EndpointOut(ResponseModel):
    id: str
    url: str
    event_types: list[str] = Field(description="The event types delivered; '*' for all")
    enabled: bool
    disabled_reason: str | None
    created_at: datetime


class EndpointWithSecretOut(EndpointOut):
    """An endpoint as created or rotated: the only answers that show its signing secret."""

    secret: str


class DeletedEndpointOut(ResponseModel):
    id: str
    deleted: bool


class DeliveryAttemptOut(ResponseModel):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(ResponseModel):
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    account_id: str | None
    status: str = Field(description="pending, succeeded or failed")
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    log: list[DeliveryAttemptOut]
    created_at: datetime
