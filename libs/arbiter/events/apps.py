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
        import os

        from django.conf import settings

        from arbiter.api.health import register_readiness_check
        from arbiter.events.broker import BOOTSTRAP_ENV

        # Web processes only write to the outbox; the broker is their dependency only where one is configured
        # (under `arbiter up` and in deployments), where an unreachable broker means events are not flowing.
        if settings.KAFKA_BOOTSTRAP_SERVERS or os.environ.get(BOOTSTRAP_ENV):
            register_readiness_check("broker", BrokerReadinessCheck())
