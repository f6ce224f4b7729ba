"""Helpers for the billing service's tests: events handed to its handlers as the consumer runner hands them
(checked against their schema first), and what it published."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from arbiter.events.envelope import Event
from arbiter.events.handlers import handlers_for
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import get_event_type
from arbiter.tenancy.scoping import org_scope


def deliver(event: Event, service: str = "billing") -> None:
    get_event_type(event.type).validate(event.data)
    handler = handlers_for(service)[event.type]
    with transaction.atomic(using=service), org_scope(event.org_id):
        handler(event)


def usage_event(
    org_id: int, meter: str, units: int, *, model_id: int = 7, when: datetime | None = None
) -> Event:
    return Event(
        type="usage.recorded",
        source="/arbiter/inference",
        org_id=org_id,
        subject=f"models/{model_id}",
        data={"meter": meter, "units": units, "model_id": model_id, "version": 1, "endpoint": "classify"},
        **({"time": when} if when else {}),
    )


def published(
    type_name: str = "entitlements.changed", *, alias: str = "billing", org_id: int | None = None
) -> list[Event]:
    events = [
        Event.from_json(row.payload)
        for row in OutboxEvent.objects.using(alias).filter(type=type_name).order_by("id")
    ]
    for event in events:
        get_event_type(type_name).validate(event.data)
    return [event for event in events if org_id is None or event.org_id == org_id]


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def meters(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["meter"]: entry for entry in body["meters"]}
