"""Event handlers this service consumes, declared with `@handles("<type>")`.

Every event of the public catalogue (`services.gateway.catalogue`) becomes a delivery for each of its org's
endpoints that subscribed to it. Which internal types reach the gateway is the registry's to say (the gateway
among their consumers); each is handled here by the same function.
"""

from __future__ import annotations

from arbiter.events import Event, handles
from arbiter.events.registry import EVENT_TYPES
from services.gateway import logic
from services.gateway.catalogue import PUBLIC_TYPES


def on_public_event(event: Event) -> None:
    """Fan the event out to the org's matching enabled endpoints (idempotent: one delivery per endpoint)."""
    logic.event_fan_out(
        org_id=event.org_id, event_id=event.id, type=event.type, time=event.time, data=event.data
    )


for _type in PUBLIC_TYPES:
    if _type in EVENT_TYPES and "gateway" in EVENT_TYPES[_type].consumers:
        handles(_type)(on_public_event)
