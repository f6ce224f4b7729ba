"""The event backbone's settings, read from the environment when a relay or consumer starts.

| variable | default | meaning |
| `KAFKA_BOOTSTRAP_SERVERS` | unset | the Kafka cluster; unset under `arbiter up` starts the embedded broker |
| `ARBITER_BROKER_STORAGE` | `memory://tansu/` | the embedded broker's storage (`s3://bucket/` persists) |
| `ARBITER_EVENTS_PARTITIONS` | 4 | partitions of each topic Arbiter creates |
| `ARBITER_EVENTS_MAX_ATTEMPTS` | 5 | handler attempts before an event is dead-lettered |
| `ARBITER_EVENTS_RETRY_BACKOFF_MS` | 500 | first retry delay; it doubles per attempt |
| `ARBITER_EVENTS_SESSION_TIMEOUT_MS` | 6000 | consumer group session; joining takes about half of it |
| `ARBITER_RELAY_BATCH_SIZE` | 1000 | outbox rows per relay batch |
| `ARBITER_OUTBOX_RETENTION_DAYS` | 7 | sent outbox rows are deleted after this long |
"""

from __future__ import annotations

import os
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from arbiter.config.env import env_int
from arbiter.events.broker import BOOTSTRAP_ENV, topic_partitions
from arbiter.events.consumer import ConsumerConfig
from arbiter.events.relay import RelayConfig

__all__ = ["bootstrap_servers", "consumer_config", "relay_config", "topic_partitions"]


def bootstrap_servers() -> str:
    value = getattr(settings, "KAFKA_BOOTSTRAP_SERVERS", None) or os.environ.get(BOOTSTRAP_ENV)
    if not value:
        raise ImproperlyConfigured(
            f"{BOOTSTRAP_ENV} is not set: point it at a Kafka cluster, or run `arbiter up`, which starts the "
            "embedded broker and sets it for its processes"
        )
    return str(value)


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        max_attempts=env_int("ARBITER_EVENTS_MAX_ATTEMPTS", 5),
        backoff_s=env_int("ARBITER_EVENTS_RETRY_BACKOFF_MS", 500) / 1000,
        session_timeout_ms=env_int("ARBITER_EVENTS_SESSION_TIMEOUT_MS", 6000),
    )


def relay_config() -> RelayConfig:
    return RelayConfig(
        batch_size=env_int("ARBITER_RELAY_BATCH_SIZE", 1000),
        retention=timedelta(days=env_int("ARBITER_OUTBOX_RETENTION_DAYS", 7)),
    )
