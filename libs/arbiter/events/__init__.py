"""Events: CloudEvents over Kafka with a transactional outbox.

Producing: inside the transaction that changes state, call
    publish(type="snapshot.created", org_id=org_id, subject=f"snapshots/{snapshot.pk}", data={...})
Consuming: in `services/<svc>/events.py`,
    @handles("training.requested")
    def on_training_requested(event: Event) -> None: ...
Types, topics, schemas, producers and consumers are listed once, in `arbiter.events.registry`.

Modules: `envelope` (the CloudEvent), `registry` and `schemas/`, `publishing` (`publish`), `handlers`
(`@handles`), `models` (outbox, processed ids), `relay` (outbox -> Kafka), `consumer` (Kafka -> handlers,
retries, dead letters), `retrying` (the workers' backoff, on tenacity), `clients` (kafka-python settings),
`broker` (the embedded tansu broker), `tools` (`arbiter events`), `conf` (environment), `testing` (pytest
fixtures). Commands: `arbiter relay`,
`arbiter consume`, `arbiter events tail|dlq|outbox|topics|broker`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Event", "PublishError", "handles", "publish"]


def __getattr__(name: str) -> Any:
    # Imported lazily so the broker and envelope modules work without Django being set up.
    if name == "Event":
        from arbiter.events.envelope import Event

        return Event
    if name == "handles":
        from arbiter.events.handlers import handles

        return handles
    if name in ("publish", "PublishError"):
        from arbiter.events import publishing

        return getattr(publishing, name)
    raise AttributeError(name)
