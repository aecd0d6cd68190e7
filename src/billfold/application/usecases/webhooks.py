"""Webhook use cases (operator): endpoints, their secrets, the delivery log, redelivery."""

from __future__ import annotations

from sqlalchemy.orm import Session

from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_operator
from billfold.services import Services
from billfold.webhooks import service
from billfold.webhooks.schemas import (
    CreateEndpoint,
    DeletedEndpointOut,
    DeliveryOut,
    EndpointOut,
    EndpointWithSecretOut,
    UpdateEndpoint,
)


def create_endpoint(app: Services, *, call: Call, body: CreateEndpoint) -> Reply:
    """Register an endpoint; its signing secret is shown in full only here and on rotation."""

    def handler(session: Session) -> Outcome:
        endpoint = service.create_endpoint(
            session,
            url=body.url,
            event_types=body.event_types,
            enabled=body.enabled,
            allow_private=app.settings.webhook_allow_private,
        )
        view = service.endpoint_view(endpoint, reveal_secret=True)
        return 201, EndpointWithSecretOut.model_validate(view)

    return for_operator(app, call).atomic(handler)


def list_endpoints(app: Services) -> list[EndpointOut]:
    with app.database.read() as session:
        return [
            EndpointOut.model_validate(service.endpoint_view(e))
            for e in service.list_endpoints(session)
        ]


def update_endpoint(app: Services, *, call: Call, endpoint_id: str, body: UpdateEndpoint) -> Reply:
    """Change the URL, the event filter, or enable/disable (enabling clears the reason)."""

    def handler(session: Session) -> Outcome:
        endpoint = service.update_endpoint(
            session,
            endpoint_id,
            url=body.url,
            event_types=body.event_types,
            enabled=body.enabled,
            allow_private=app.settings.webhook_allow_private,
        )
        return 200, EndpointOut.model_validate(service.endpoint_view(endpoint))

    return for_operator(app, call).atomic(handler)


def rotate_secret(app: Services, *, call: Call, endpoint_id: str) -> Reply:
    def handler(session: Session) -> Outcome:
        endpoint = service.rotate_secret(session, endpoint_id)
        view = service.endpoint_view(endpoint, reveal_secret=True)
        return 200, EndpointWithSecretOut.model_validate(view)

    return for_operator(app, call).atomic(handler)


def delete_endpoint(app: Services, *, call: Call, endpoint_id: str) -> Reply:
    """Stop delivering to it; its delivery log is kept."""

    def handler(session: Session) -> Outcome:
        endpoint = service.delete_endpoint(session, endpoint_id)
        return 200, DeletedEndpointOut(id=endpoint.id, deleted=True)

    return for_operator(app, call).atomic(handler)


def deliveries(app: Services, *, endpoint_id: str, limit: int = 50) -> list[DeliveryOut]:
    """The delivery log, newest first, each with its attempts."""
    with app.database.read() as session:
        return [
            DeliveryOut.model_validate(service.delivery_view(delivery, event_type))
            for delivery, event_type in service.list_deliveries(session, endpoint_id, limit=limit)
        ]


def redeliver(app: Services, *, call: Call, delivery_id: str) -> Reply:
    """Send a delivery again now, whatever became of it (the webhook-id stays the same)."""

    def handler(session: Session) -> Outcome:
        delivery = service.redeliver(session, delivery_id)
        view = service.delivery_view(delivery, service.event_type_of(session, delivery))
        return 200, DeliveryOut.model_validate(view)

    return for_operator(app, call).atomic(handler)
