"""kafka-python clients configured the way Arbiter's delivery guarantees need them.

Observed against tansu (and true of Kafka): a consumer group join takes about half of `session_timeout_ms`,
so keep it short where start-up latency matters; `end_offsets` can under-report (tansu answers with the
last batch's base offset plus one), so never use it to decide that a partition has been read to its end.

Every client gets its connection security (TLS, SASL) from one place, `connection_config()`, which reads
`KafkaSecuritySettings` (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from arbiter.config.typed_settings import KafkaSecuritySettings, arbiter_settings

# A send is never abandoned by the client: the relay decides when to give up (it never does, it waits
# and retries), so an expired batch can never let a later event of the same key overtake it.
_NEVER_MS = 2**31 - 1

DEFAULT_SESSION_TIMEOUT_MS = 6000


def connection_config(security: KafkaSecuritySettings | None = None) -> dict[str, Any]:
    """The security options every producer, consumer and admin client gets (this process's settings unless
    `security` is given)."""
    return (security or arbiter_settings().kafka).client_config()


def admin_create(
    *,
    bootstrap_servers: str,
    timeout_ms: int = 10_000,
    client_id: str = "arbiter-admin",
    security: KafkaSecuritySettings | None = None,
) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        **connection_config(security),
    )


def producer_create(
    *,
    bootstrap_servers: str,
    client_id: str = "arbiter",
    connect_timeout_ms: int = 10_000,
    security: KafkaSecuritySettings | None = None,
    **overrides: Any,
) -> KafkaProducer:
    """An ordered, acknowledged producer: acks=all and one request in flight per connection.

    kafka-python 3 turns idempotence on by default, but a broker that forgets producer ids (a restarted
    in-memory tansu answers UnknownProducerId) makes it drop in-flight batches while later ones proceed:
    that would reorder a tenant's events. One request in flight gives the same per-partition order
    without depending on broker-side producer state; duplicates from retries are removed by consumers.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": 1,
        "retries": float("inf"),
        "delivery_timeout_ms": _NEVER_MS,
        "request_timeout_ms": 10_000,
        "linger_ms": 2,
        "batch_size": 256 * 1024,
        "reconnect_backoff_max_ms": 1000,
        "bootstrap_timeout_ms": connect_timeout_ms,
        # send() blocks this long for metadata (an unknown topic while the broker is down) before raising.
        "max_block_ms": connect_timeout_ms,
        **connection_config(security),
    }
    config.update(overrides)
    return KafkaProducer(**config)


def consumer_create(
    *,
    bootstrap_servers: str,
    group_id: str | None,
    topics: Iterable[str] = (),
    client_id: str = "arbiter",
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
    connect_timeout_ms: int = 10_000,
    security: KafkaSecuritySettings | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A manually committing consumer that starts a new group at the earliest offset, so events published
    before a service's first start are still delivered."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(100, session_timeout_ms // 3),
        # The broker holds a fetch open until data arrives or this passes: it bounds idle latency.
        "fetch_max_wait_ms": 50,
        "max_poll_records": 200,
        "reconnect_backoff_max_ms": 1000,
        "bootstrap_timeout_ms": connect_timeout_ms,
        **connection_config(security),
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    topic_list = sorted(set(topics))
    if topic_list:
        consumer.subscribe(topic_list)
    return consumer
