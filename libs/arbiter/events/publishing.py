"""`publish()`: write an event into the producing service's outbox, inside the caller's transaction."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from arbiter.config.services import db_alias
from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import EventSchemaError, get_event_type
from arbiter.sql import insert_rows
from arbiter.telemetry.propagation import current_traceparent

logger = logging.getLogger(__name__)

# Kafka's default message limit is 1 MiB; an event is a notification, not a payload carrier (blobs go to
# the blob store and events carry their keys), so refuse it here rather than wedge the relay later.
MAX_EVENT_BYTES = 512 * 1024


class PublishError(RuntimeError):
    pass


def publish(*, type: str, org_id: int, subject: str, data: dict[str, Any]) -> Event:
    """Record an event for the relay to send once the surrounding transaction commits.

    Must run inside `transaction.atomic(using=<producer's alias>)`: a rolled-back transaction publishes
    nothing. Raises `UnknownEventType`, `EventSchemaError` (outside production, where it is logged and the
    consumers dead-letter it) or `PublishError`.
    """
    event_type = get_event_type(type)
    if not org_id:
        raise PublishError(f"{type}: every event needs the org it belongs to (org_id)")
    try:
        event_type.validate(data)
    except EventSchemaError:
        if settings.ARBITER_ENV != "production":
            raise
        logger.error("publishing an event that fails its schema", extra={"event_type": type}, exc_info=True)
    alias = db_alias(event_type.producer)
    if not transaction.get_connection(alias).in_atomic_block:
        raise PublishError(
            f"publish({type!r}) must run inside transaction.atomic(using={alias!r}) so the event commits "
            "with the change it announces"
        )
    event = Event(
        type=type,
        source=f"/arbiter/{event_type.producer}",
        subject=subject,
        org_id=int(org_id),
        data=data,
        traceparent=current_traceparent(),
        dataschema=event_type.schema.get("$id"),
    )
    encoded = event.to_json()
    if len(encoded) > MAX_EVENT_BYTES:
        raise PublishError(f"{type}: the event is {len(encoded)} bytes; the limit is {MAX_EVENT_BYTES}")
    insert_rows(
        OutboxEvent,
        [
            {
                "event_id": event.id,
                "type": type,
                "topic": event_type.topic,
                "key": str(event.org_id),
                "payload": encoded.decode(),
            }
        ],
        using=alias,
    )
    return event
