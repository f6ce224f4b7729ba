"""Killing the delivery worker (SIGKILL) in the middle of a retried delivery loses nothing: a restarted worker
takes the delivery up again from the database, with the same `webhook-id`, until the receiver has it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
from django.db import connections, transaction

from arbiter.events.envelope import Event
from arbiter.events.testing import wait_for
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant
from services.gateway.events import on_public_event
from services.gateway.models import WebhookDelivery
from tests.gateway.receiver import running_receiver

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases=["default"])]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "ARBITER_DB_NAME"))}
    db = connections["default"].settings_dict
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    env.update(
        DATABASE_URL_GATEWAY=f"postgres://{db['USER']}:{db['PASSWORD']}@{host}/{db['NAME']}",
        ARBITER_SERVICES="gateway",
        ARBITER_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        ARBITER_WEBHOOK_RETRY_SCHEDULE="0,0.3,0.3,0.3",
        ARBITER_WEBHOOK_TIMEOUT_SECONDS="1",
        ARBITER_WEBHOOK_POLL_SECONDS="0.1",
        ARBITER_LOG_LEVEL="ERROR",
    )
    return env


def test_a_worker_killed_mid_attempt_is_resumed_by_the_next_with_the_same_webhook_id(
    tenant: Tenant, webhook_settings: Any
) -> None:
    env = _environment()
    argv = [sys.executable, "-m", "arbiter.cli", "webhooks", "deliver"]
    in_flight = threading.Event()
    release = threading.Event()

    def stall() -> tuple[int, dict[str, str], bytes]:
        in_flight.set()
        release.wait(30)
        return (200, {}, b"too late")

    with running_receiver() as receiver:
        client = tenant.client(["admin"])
        endpoint = client.post(
            tenant.url("/webhooks"), {"url": receiver.url(), "events": ["*"]}, format="json"
        ).json()
        receiver.secret = endpoint["secret"]
        receiver.answer("/hook", (500, {}, b"down"), stall)
        event = Event(
            type="deployment.live",
            source="/arbiter/inference",
            subject="deployments/4",
            org_id=tenant.org.pk,
            data={"deployment_id": 4, "model_id": 2, "version": 1, "name": "tox"},
        )
        with transaction.atomic(), org_scope(tenant.org.pk):
            on_public_event(event)
        worker = subprocess.Popen(argv, env=env)
        try:
            # The first attempt fails (500); the retry is in flight when the worker dies.
            assert in_flight.wait(30), "the retry never reached the receiver"
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            delivery = WebhookDelivery.objects.unscoped().get()
            assert delivery.status == "pending" and delivery.attempts == 1
            worker = subprocess.Popen(argv, env=env)
            # Once the dead worker's lease runs out, the new one attempts it again (the receiver now says 200).
            got = receiver.wait(3, timeout_s=40)

            def settled() -> Any:
                return WebhookDelivery.objects.unscoped().filter(status="succeeded").first()

            delivery = wait_for(settled, timeout_s=30)
        finally:
            release.set()
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    assert len({r.headers["webhook-id"] for r in got}) == 1 == len({r.body for r in got})
    assert all(r.verified is not None for r in got)
    assert delivery.message_id == got[0].headers["webhook-id"]
