from __future__ import annotations

import threading
import time

from django.apps import AppConfig


class BrokerReadinessCheck:
    """`/readyz`'s broker check, cached briefly so that frequent probes do not each open a connection."""

    ttl_s = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def __call__(self) -> str | None:
        from arbiter.events.broker import broker_problem
        from arbiter.events.conf import bootstrap_servers

        with self._lock:
            if time.monotonic() - self._checked_at > self.ttl_s:
                self._problem = broker_problem(bootstrap_servers=bootstrap_servers(), timeout_s=1.0)
                self._checked_at = time.monotonic()
            return self._problem


class EventsConfig(AppConfig):
    name = "arbiter.events"
    label = "events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from arbiter.api.health import register_readiness_check
        from arbiter.config.typed_settings import arbiter_settings

        # Reported wherever a broker is configured. Not required: web processes only write to the outbox, so a
        # Kafka outage delays events but must not take every pod out of rotation (`/readyz` says "degraded").
        if arbiter_settings().events.bootstrap_servers:
            register_readiness_check("broker", BrokerReadinessCheck(), required=False)
