"""Deliveries end to end in-process: an event of the org becomes a signed POST to each subscribed endpoint, which a
receiver on loopback verifies with the `standardwebhooks` library; retries, 410, the failure window, rotation,
the egress guard and per-endpoint concurrency, as a receiver sees them."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import Any

import pytest
from django.core import mail
from django.db import transaction
from standardwebhooks import Webhook

from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant
from services.gateway.delivery import DeliveryWorker
from services.gateway.events import on_public_event
from services.gateway.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.gateway.receiver import Receiver, running_receiver

pytestmark = pytest.mark.django_db(transaction=True, databases=["default"])

COMPLETED = {
    "run_id": 7,
    "model_id": 2,
    "version": 1,
    "artifact": "artifacts/org-1/model-2/v1.tar.gz",
    "model_name": "comments",
    "metrics_summary": {"selected": "head", "selection_metric": 0.9, "heads": {}},
}


def subscribe(tenant: Tenant, url: str, events: list[str] | None = None) -> dict[str, Any]:
    response = tenant.client(["admin"]).post(
        tenant.url("/webhooks"), {"url": url, "events": events or ["training.*"]}, format="json"
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def happen(tenant: Tenant, type: str = "training.completed", data: dict[str, Any] | None = None) -> Event:
    """What the gateway's consumer does with an event of the org (the handler, in its transaction)."""
    event = Event(
        type=type,
        source="/arbiter/training",
        subject="models/2",
        org_id=tenant.org.pk,
        data=data or COMPLETED,
    )
    with transaction.atomic(), org_scope(tenant.org.pk):
        on_public_event(event)
    return event


def test_an_event_is_delivered_signed_with_the_public_payload_only(
    tenant: Tenant, receiver: Receiver, webhook_settings: Any
) -> None:
    endpoint = subscribe(tenant, receiver.url())
    receiver.secret = endpoint["secret"]
    event = happen(tenant)
    DeliveryWorker().drain()
    got = receiver.wait(1)[0]
    assert got.verified is not None, "the standardwebhooks library did not verify the delivery"
    assert got.verified["type"] == "training.completed"
    assert got.verified["data"]["model_name"] == "comments"
    assert "artifact" not in got.verified["data"]  # internal fields stay inside
    assert datetime.fromisoformat(got.verified["timestamp"]) == event.time
    assert got.headers["webhook-id"].startswith("msg_")
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    # Handling the same event again (a redelivery) sends nothing twice.
    happen_again = Event(**{**event.__dict__})
    with transaction.atomic(), org_scope(tenant.org.pk):
        on_public_event(happen_again)
    DeliveryWorker().drain()
    assert len(receiver.on("/hook")) == 1
    log = tenant.client(["admin"]).get(tenant.url(f"/webhooks/{endpoint['id']}/deliveries")).json()
    [delivery] = log["results"]
    assert delivery["status"] == "succeeded" and delivery["webhook_id"] == got.headers["webhook-id"]
    assert delivery["attempts"][0]["status_code"] == 200 and delivery["attempts"][0]["response_body"] == "ok"


def test_an_endpoint_gets_only_the_types_it_subscribed_to(
    tenant: Tenant, receiver: Receiver, webhook_settings: Any
) -> None:
    subscribe(tenant, receiver.url("/deploys"), ["deployment.live"])
    subscribe(tenant, receiver.url("/all"), ["*"])
    happen(tenant)
    DeliveryWorker().drain()
    assert len(receiver.wait(1, "/all")) == 1
    assert receiver.on("/deploys") == []


def test_retries_keep_the_same_webhook_id_and_body_until_a_2xx(
    tenant: Tenant, receiver: Receiver, webhook_settings: Any
) -> None:
    endpoint = subscribe(tenant, receiver.url())
    receiver.secret = endpoint["secret"]
    receiver.answer("/hook", (500, {}, b"boom"), (503, {}, b"later"))
    happen(tenant)
    worker = DeliveryWorker()
    deadline = time.monotonic() + 15
    while len(receiver.on("/hook")) < 3 and time.monotonic() < deadline:
        worker.drain(timeout_s=1)
        time.sleep(0.05)
    got = receiver.wait(3)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert len({r.body for r in got}) == 1
    assert all(r.verified is not None for r in got)
    delivery = WebhookDelivery.objects.unscoped().get()
    assert delivery.status == "succeeded" and delivery.attempts == 3
    codes = [a.status_code for a in WebhookAttempt.objects.unscoped().filter(delivery=delivery)]
    assert codes == [500, 503, 200]


def test_a_redirect_and_a_4xx_fail_without_retrying(
    tenant: Tenant, receiver: Receiver, webhook_settings: Any
) -> None:
    subscribe(tenant, receiver.url())
    receiver.answer("/hook", (302, {"Location": "http://10.0.0.1/"}, b""))
    happen(tenant)
    worker = DeliveryWorker()
    worker.drain()
    time.sleep(0.5)
    worker.drain()
    assert len(receiver.on("/hook")) == 1
    delivery = WebhookDelivery.objects.unscoped().get()
    assert delivery.status == "failed" and "redirects are not followed" in delivery.last_error


def test_410_disables_the_endpoint_at_once_and_unsubscribes_a_rest_hook(
    tenant: Tenant, receiver: Receiver, webhook_settings: Any
) -> None:
    client = tenant.client(["admin"])
    endpoint = subscribe(tenant, receiver.url("/gone"))
    hook = client.post(
        tenant.url("/hooks"),
        {"target_url": receiver.url("/zap"), "event": "training.completed"},
        format="json",
    ).json()
    receiver.answer("/gone", (410, {}, b"gone"))
    receiver.answer("/zap", (410, {}, b"gone"))
    happen(tenant)
    DeliveryWorker().drain()
    assert len(receiver.on("/gone")) == 1 and len(receiver.on("/zap")) == 1
    detail = client.get(tenant.url(f"/webhooks/{endpoint['id']}")).json()
    assert detail["enabled"] is False and detail["disabled_reason"] == "gone"
    assert not WebhookEndpoint.objects.unscoped().filter(pk=hook["id"]).exists()
    # Disabled: the next event is not sent to it.
    happen(tenant)
    DeliveryWorker().drain()
    assert len(receiver.on("/gone")) == 1
    assert OutboxEvent.objects.filter(type="webhook.disabled").count() == 2


def test_an_endpoint_failing_for_the_whole_window_is_disabled_its_admins_told_and_an_event_sent(
    tenant: Tenant, receiver: Receiver, webhook_settings: Any, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(
        ARBITER_WEBHOOK_DISABLE_AFTER_SECONDS="0.6", ARBITER_WEBHOOK_RETRY_SCHEDULE="0,0.3,0.3,0.3,0.3,0.3"
    )
    endpoint = subscribe(tenant, receiver.url())
    healthy = subscribe(tenant, receiver.url("/other"))
    receiver.answer("/hook", *[(500, {}, b"down")] * 10)
    happen(tenant)
    worker = DeliveryWorker()
    deadline = time.monotonic() + 15
    while WebhookEndpoint.objects.unscoped().get(pk=endpoint["id"]).enabled and time.monotonic() < deadline:
        worker.drain(timeout_s=1)
        time.sleep(0.05)
    disabled = WebhookEndpoint.objects.unscoped().get(pk=endpoint["id"])
    assert disabled.enabled is False and disabled.disabled_reason == "failing"
    assert WebhookEndpoint.objects.unscoped().get(pk=healthy["id"]).enabled
    [announced] = OutboxEvent.objects.filter(type="webhook.disabled")
    data = json.loads(announced.payload)["data"]
    assert data["endpoint_id"] == endpoint["id"] and data["reason"] == "failing"
    assert [m.to for m in mail.outbox] == [[tenant.owner.email]]
    assert "disabled" in mail.outbox[0].subject
    # The delivery stops there, failed, and can be resent once the endpoint is enabled again.
    delivery = WebhookDelivery.objects.unscoped().get(endpoint_id=endpoint["id"])
    assert delivery.status == "failed"


def test_during_a_secret_rotation_both_secrets_verify(
    tenant: Tenant, receiver: Receiver, webhook_settings: Any
) -> None:
    client = tenant.client(["admin"])
    endpoint = subscribe(tenant, receiver.url())
    rotated = client.post(
        tenant.url(f"/webhooks/{endpoint['id']}/rotate-secret"), {"overlap_seconds": 60}, format="json"
    )
    assert rotated.status_code == 200 and rotated.json()["secret"].startswith("whsec_")
    happen(tenant)
    DeliveryWorker().drain()
    got = receiver.wait(1)[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (endpoint["secret"], rotated.json()["secret"]):
        assert Webhook(secret).verify(got.body, got.headers)["type"] == "training.completed"


def test_a_private_address_outside_the_allow_list_is_refused_and_never_reached(
    tenant: Tenant, webhook_settings: Any, override_arbiter_settings: Any
) -> None:
    with running_receiver("127.0.0.2") as inside:
        endpoint = subscribe(tenant, inside.url())
        override_arbiter_settings(ARBITER_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32")
        happen(tenant)
        DeliveryWorker().drain()
        assert inside.received == []
    delivery = WebhookDelivery.objects.unscoped().get(endpoint_id=endpoint["id"])
    [attempt] = WebhookAttempt.objects.unscoped().filter(delivery=delivery)
    assert attempt.outcome == "refused" and "127.0.0.2" in attempt.error
    # And such a URL is refused when it is given.
    refused = tenant.client(["admin"]).post(
        tenant.url("/webhooks"), {"url": "http://10.1.2.3/hook", "events": ["*"]}, format="json"
    )
    assert refused.status_code == 400 and refused.json()["error"]["message"].startswith("url:")


def test_one_slow_endpoint_does_not_delay_another(
    tenant: Tenant, webhook_settings: Any, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_WEBHOOK_ENDPOINT_CONCURRENCY="2", ARBITER_WEBHOOK_WORKERS="4")
    release = threading.Event()

    def stall() -> tuple[int, dict[str, str], bytes]:
        release.wait(10)
        return (200, {}, b"slow")

    with running_receiver() as slow, running_receiver() as fast:
        slow.answer("/hook", *[stall] * 10)
        subscribe(tenant, slow.url())
        subscribe(tenant, fast.url())
        for _ in range(5):
            happen(tenant)
        stop = threading.Event()
        worker = DeliveryWorker()
        runner = threading.Thread(target=worker.run, args=(stop,))
        runner.start()
        try:
            fast.wait(5, timeout_s=10)
            # Meanwhile the slow endpoint holds at most its share of the pool.
            assert len(slow.on("/hook")) <= 2
        finally:
            release.set()
            slow.wait(5, timeout_s=20)
            stop.set()
            runner.join(20)
