"""Reads of the gateway's webhooks (the org in scope limits every query)."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet

from services.gateway.catalogue import PUBLIC_TYPES
from services.gateway.models import PublicEventSample, WebhookAttempt, WebhookDelivery, WebhookEndpoint


def endpoints(*, kind: str | None = WebhookEndpoint.KIND_ENDPOINT) -> QuerySet[WebhookEndpoint]:
    found: QuerySet[WebhookEndpoint] = WebhookEndpoint.objects.all()
    return found.filter(kind=kind) if kind else found


def endpoint_deliveries(*, endpoint_id: int, status: str | None = None) -> QuerySet[WebhookDelivery]:
    found: QuerySet[WebhookDelivery] = WebhookDelivery.objects.filter(
        endpoint_id=endpoint_id
    ).prefetch_related(
        Prefetch("attempt_log", queryset=WebhookAttempt.objects.unscoped().order_by("number", "id"))
    )
    return found.filter(status=status) if status else found


def event_samples(*, type: str, limit: int = PublicEventSample.KEEP) -> list[dict[str, Any]]:
    """Recent real payloads of this type in the org; the schema's example if there are none yet."""
    recent = [sample.body for sample in PublicEventSample.objects.filter(event_type=type)[:limit]]
    if recent:
        return recent
    public = PUBLIC_TYPES[type]
    return [{"type": type, "timestamp": "2025-01-01T00:00:00Z", "data": public.example}]
