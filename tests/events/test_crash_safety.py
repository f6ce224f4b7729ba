"""Killing and restarting the relay and a consumer (SIGKILL, mid-burst) loses no committed event and applies
none twice; each org's events are still applied in the order they were committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connections, transaction

from arbiter.config.services import service_for_alias
from arbiter.events import publish
from arbiter.events.models import OutboxEvent, ProcessedEvent
from arbiter.events.testing import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases=["default", "training", "inference"]),
]


def _environment(bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "ARBITER_DB_NAME"))}
    for alias in ("default", "training", "inference"):
        db = connections[alias].settings_dict
        host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        url = f"postgres://{db['USER']}:{db['PASSWORD']}@{host}/{db['NAME']}"
        env[f"DATABASE_URL_{service_for_alias(alias).upper()}"] = url
    env.update(
        ARBITER_SERVICES="gateway,training,inference",
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        ARBITER_EVENTS_SESSION_TIMEOUT_MS="2000",
        ARBITER_EVENTS_RETRY_BACKOFF_MS="50",
        ARBITER_LOG_LEVEL="ERROR",
    )
    return env


def test_killing_the_relay_and_a_consumer_mid_burst_loses_nothing_and_applies_nothing_twice(
    kafka_bootstrap: str, event_types
) -> None:
    thing = event_types(producer="training")
    applied = event_types(producer="inference", consumers=())
    env = _environment(kafka_bootstrap)
    spec = {
        "schema_dir": str(thing.schema_dir),
        "types": [{"type": t.type, "topic": t.topic, "producer": t.producer} for t in (thing, applied)],
        "consumer": "tests-crash",
        "alias": "inference",
        "handles": thing.type,
        "follow_up": applied.type,
    }
    relay_argv = [sys.executable, "-m", "arbiter.cli", "relay", "--services", "training"]
    consumer_argv = [sys.executable, "-m", "tests.events.consumer_process", json.dumps(spec)]
    processes = {
        "relay": subprocess.Popen(relay_argv, env=env),
        "consumer": subprocess.Popen(consumer_argv, env=env),
    }

    def sent() -> int:
        return OutboxEvent.objects.using("training").filter(sent_at__isnull=False).count()

    def processed() -> int:
        return ProcessedEvent.objects.using("inference").filter(consumer="tests-crash").count()

    def crash_and_restart(name: str, argv: list[str]) -> None:
        processes[name].send_signal(signal.SIGKILL)
        processes[name].wait()
        processes[name] = subprocess.Popen(argv, env=env)

    total = 300
    orgs = (1, 2, 3, 4, 5)
    published: dict[int, list[int]] = {org: [] for org in orgs}
    try:
        for n in range(total):
            org = orgs[n % len(orgs)]
            with transaction.atomic(using="training"):
                publish(type=thing.type, org_id=org, subject=f"things/{n}", data={"n": n})
            published[org].append(n)
            if n == total // 3:
                wait_for(sent, timeout_s=60)
                crash_and_restart("relay", relay_argv)
            if n == 2 * total // 3:
                wait_for(processed, timeout_s=60)
                crash_and_restart("consumer", consumer_argv)
            time.sleep(0.01)
        wait_for(lambda: processed() == total, timeout_s=90)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)

    assert sent() == total
    follow_ups = OutboxEvent.objects.using("inference").filter(type=applied.type).order_by("id")
    applied_by_org: dict[int, list[int]] = {org: [] for org in orgs}
    for row in follow_ups:
        applied_by_org[int(row.body["orgid"])].append(row.body["data"]["n"])
    assert applied_by_org == published
