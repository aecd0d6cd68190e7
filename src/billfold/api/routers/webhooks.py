"""Operator endpoints: register webhook endpoints, rotate secrets, inspect and redeliver.

These writes take no Idempotency-Key over HTTP (they never did); the use cases honour one
given in their `Call` by another front end."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from billfold.api.deps import Call, Operator, ServicesDep, respond
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import webhooks
from billfold.schemas import ERROR_RESPONSES, Envelope
from billfold.webhooks.schemas import (
    CreateEndpoint,
    DeletedEndpointOut,
    DeliveryOut,
    EndpointOut,
    EndpointWithSecretOut,
    UpdateEndpoint,
)

router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["webhooks"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)


@router.post("/webhook-endpoints", response_model=Envelope[EndpointWithSecretOut], status_code=201)
def create_endpoint(body: CreateEndpoint, services: ServicesDep) -> Response:
    """Register an endpoint; its signing secret is shown in full only here and on rotation."""
    return respond(webhooks.create_endpoint(services, call=Call(), body=body))


@router.get("/webhook-endpoints", response_model=Envelope[list[EndpointOut]])
def list_endpoints(services: ServicesDep) -> Response:
    return ok(webhooks.list_endpoints(services))


@router.put("/webhook-endpoints/{endpoint_id}", response_model=Envelope[EndpointOut])
def update_endpoint(endpoint_id: str, body: UpdateEndpoint, services: ServicesDep) -> Response:
    """Change the URL, the event filter, or enable/disable (enabling clears the reason)."""
    return respond(
        webhooks.update_endpoint(services, call=Call(), endpoint_id=endpoint_id, body=body)
    )


@router.post(
    "/webhook-endpoints/{endpoint_id}/rotate-secret",
    response_model=Envelope[EndpointWithSecretOut],
)
def rotate_secret(endpoint_id: str, services: ServicesDep) -> Response:
    return respond(webhooks.rotate_secret(services, call=Call(), endpoint_id=endpoint_id))


@router.delete("/webhook-endpoints/{endpoint_id}", response_model=Envelope[DeletedEndpointOut])
def delete_endpoint(endpoint_id: str, services: ServicesDep) -> Response:
    """Stop delivering to it; its delivery log is kept."""
    return respond(webhooks.delete_endpoint(services, call=Call(), endpoint_id=endpoint_id))


@router.get(
    "/webhook-endpoints/{endpoint_id}/deliveries", response_model=Envelope[list[DeliveryOut]]
)
def list_deliveries(
    endpoint_id: str, services: ServicesDep, limit: int = Query(default=50, ge=1, le=200)
) -> Response:
    """The delivery log, newest first, each with its attempts."""
    return ok(webhooks.deliveries(services, endpoint_id=endpoint_id, limit=limit))


@router.post("/webhook-deliveries/{delivery_id}/redeliver", response_model=Envelope[DeliveryOut])
def redeliver(delivery_id: str, services: ServicesDep) -> Response:
    return respond(webhooks.redeliver(services, call=Call(), delivery_id=delivery_id))
