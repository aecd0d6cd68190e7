"""Operator endpoints: register webhook endpoints, rotate secrets, inspect and redeliver."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import Field, field_validator
from sqlalchemy import select

from billfold.api.deps import Operator, ServicesDep
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.schemas import ERROR_RESPONSES, Envelope, RequestModel
from billfold.webhooks import egress, service
from billfold.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["webhooks"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)

Url = Annotated[str, Field(min_length=8, max_length=2000)]


def _event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - service.EVENT_TYPES - {"*"})
    if unknown:
        raise ValueError(
            f"unknown event types {unknown}; known: {sorted(service.EVENT_TYPES)} or '*'"
        )
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


@router.post("/webhook-endpoints", response_model=Envelope[dict[str, Any]], status_code=201)
def create_endpoint(body: CreateEndpoint, services: ServicesDep) -> Response:
    """Register an endpoint; its signing secret is shown in full only here and on rotation."""
    with services.database.transaction() as session:
        endpoint = service.create_endpoint(
            session,
            url=body.url,
            event_types=body.event_types,
            enabled=body.enabled,
            allow_private=services.settings.webhook_allow_private,
        )
        return ok(service.endpoint_view(endpoint, reveal_secret=True), status_code=201)


@router.get("/webhook-endpoints", response_model=Envelope[list[dict[str, Any]]])
def list_endpoints(services: ServicesDep) -> Response:
    with services.database.read() as session:
        endpoints = session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at))
        return ok([service.endpoint_view(e) for e in endpoints])


@router.put("/webhook-endpoints/{endpoint_id}", response_model=Envelope[dict[str, Any]])
def update_endpoint(endpoint_id: str, body: UpdateEndpoint, services: ServicesDep) -> Response:
    """Change the URL, the event filter, or enable/disable (enabling clears the reason)."""
    with services.database.transaction() as session:
        endpoint = service.get_endpoint(session, endpoint_id)
        if body.url is not None:
            egress.check_url(body.url, allow_private=services.settings.webhook_allow_private)
            endpoint.url = body.url
        if body.event_types is not None:
            endpoint.event_types = body.event_types
        if body.enabled is not None:
            endpoint.enabled = body.enabled
            endpoint.disabled_reason = None if body.enabled else "Disabled by the operator."
        return ok(service.endpoint_view(endpoint))


@router.post(
    "/webhook-endpoints/{endpoint_id}/rotate-secret", response_model=Envelope[dict[str, Any]]
)
def rotate_secret(endpoint_id: str, services: ServicesDep) -> Response:
    with services.database.transaction() as session:
        endpoint = service.get_endpoint(session, endpoint_id)
        endpoint.secret = service.new_webhook_secret()
        return ok(service.endpoint_view(endpoint, reveal_secret=True))


@router.delete("/webhook-endpoints/{endpoint_id}", response_model=Envelope[dict[str, Any]])
def delete_endpoint(endpoint_id: str, services: ServicesDep) -> Response:
    """Stop delivering to it; its delivery log is kept."""
    with services.database.transaction() as session:
        endpoint = service.get_endpoint(session, endpoint_id)
        endpoint.enabled = False
        endpoint.disabled_reason = "Deleted by the operator."
        endpoint.event_types = []
        return ok({"id": endpoint.id, "deleted": True})


@router.get(
    "/webhook-endpoints/{endpoint_id}/deliveries", response_model=Envelope[list[dict[str, Any]]]
)
def list_deliveries(
    endpoint_id: str, services: ServicesDep, limit: int = Query(default=50, ge=1, le=200)
) -> Response:
    """The delivery log, newest first, each with its attempts."""
    with services.database.read() as session:
        service.get_endpoint(session, endpoint_id)
        rows = session.execute(
            select(WebhookDelivery, WebhookEvent.type)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(limit)
        ).all()
        return ok([service.delivery_view(delivery, event_type) for delivery, event_type in rows])


@router.post("/webhook-deliveries/{delivery_id}/redeliver", response_model=Envelope[dict[str, Any]])
def redeliver(delivery_id: str, services: ServicesDep) -> Response:
    with services.database.transaction() as session:
        delivery = service.redeliver(session, delivery_id)
        event = session.get(WebhookEvent, delivery.event_id)
        return ok(service.delivery_view(delivery, event.type if event else ""))
