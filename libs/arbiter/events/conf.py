"""The event backbone's settings, as the relay and consumers use them: `EventsSettings` (broker address,
partitions, retries, relay batches) and `KafkaSecuritySettings` (TLS and SASL) in
`arbiter.config.typed_settings`; every variable is listed in README.md's "Configuration"."""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

from arbiter.config.typed_settings import EventsSettings, arbiter_settings
from arbiter.events.broker import BOOTSTRAP_ENV
from arbiter.events.consumer import ConsumerConfig
from arbiter.events.relay import RelayConfig

__all__ = ["bootstrap_servers", "consumer_config", "events_settings", "relay_config", "topic_partitions"]


def events_settings() -> EventsSettings:
    return arbiter_settings().events


def bootstrap_servers() -> str:
    value = events_settings().bootstrap_servers
    if not value:
        raise ImproperlyConfigured(
            f"{BOOTSTRAP_ENV} is not set: point it at a Kafka cluster, or run `arbiter up`, which starts the "
            "embedded broker and sets it for its processes"
        )
    return value


def topic_partitions() -> int:
    return events_settings().partitions


def consumer_config() -> ConsumerConfig:
    events = events_settings()
    return ConsumerConfig(
        max_attempts=events.max_attempts,
        backoff_s=events.retry_backoff_ms / 1000,
        session_timeout_ms=events.session_timeout_ms,
    )


def relay_config() -> RelayConfig:
    events = events_settings()
    return RelayConfig(
        batch_size=events.relay_batch_size, retention=timedelta(days=events.outbox_retention_days)
    )
