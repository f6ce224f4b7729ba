"""The webhooks API and console as a client and an admin use them: endpoints with a secret shown once, clear
errors, REST hooks with samples, the public catalogue, the delivery log; and another org's webhooks are 404."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from arbiter.events.envelope import Event
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.gateway.events import on_public_event
from services.gateway.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db(databases=["default"])


@pytest.fixture(autouse=True)
def _loopback(override_arbiter_settings: Any) -> None:
    override_arbiter_settings(ARBITER_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8")


URL = "http://127.0.0.1:9/hook"


def test_an_endpoint_is_created_with_its_secret_shown_once_then_listed_updated_and_deleted(
    tenant: Tenant,
) -> None:
    client = tenant.client(["admin"])
    created = client.post(
        tenant.url("/webhooks"),
        {"url": URL, "events": ["training.*", "deployment.live"], "description": "ops"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) >= len("whsec_") + 32
    assert body["events"] == ["deployment.live", "training.*"] and body["enabled"] is True
    listed = client.get(tenant.url("/webhooks")).json()
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]
    assert "secret" not in client.get(tenant.url(f"/webhooks/{body['id']}")).json()
    # At rest the secret is encrypted: a database dump does not reveal it, the endpoint still reads it to sign.
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT secret_encrypted FROM gateway_webhookendpoint WHERE id = %s", [body["id"]])
        (stored,) = cursor.fetchone()
    assert body["secret"] not in stored and body["secret"][len("whsec_") :] not in stored
    with org_scope(tenant.org.pk):
        assert WebhookEndpoint.objects.get(pk=body["id"]).signing_secrets() == [body["secret"]]
    patched = client.patch(
        tenant.url(f"/webhooks/{body['id']}"), {"enabled": False, "events": ["*"]}, format="json"
    )
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert patched.json()["disabled_reason"] == "user" and patched.json()["events"] == ["*"]
    assert client.delete(tenant.url(f"/webhooks/{body['id']}")).status_code == 204
    assert client.get(tenant.url("/webhooks")).json() == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"events": ["*"]}, "url"),
        ({"url": URL, "events": []}, "events"),
        ({"url": URL, "events": ["training.finished"]}, "events"),
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": "http://169.254.169.254/latest", "events": ["*"]}, "url"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_stores_nothing(
    tenant: Tenant, payload: dict[str, Any], field: str
) -> None:
    response = tenant.client(["admin"]).post(tenant.url("/webhooks"), payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"].startswith(f"{field}:")
    assert not WebhookEndpoint.objects.unscoped().exists()


def test_managing_webhooks_needs_the_admin_scope(tenant: Tenant) -> None:
    client = tenant.client(["models:read", "models:write"])
    assert client.get(tenant.url("/webhooks")).status_code == 403
    assert (
        client.post(
            tenant.url("/hooks"), {"target_url": URL, "event": "training.completed"}, format="json"
        ).status_code
        == 403
    )


def test_a_zapier_client_subscribes_gets_samples_and_unsubscribes(tenant: Tenant) -> None:
    client = tenant.client(["admin"])
    assert client.get("/api/v1/me").status_code == 200  # Zapier's auth test
    subscribed = client.post(
        tenant.url("/hooks"), {"target_url": URL, "event": "training.completed"}, format="json"
    )
    assert subscribed.status_code == 201, subscribed.content
    hook = subscribed.json()
    assert hook["event"] == "training.completed" and hook["secret"].startswith("whsec_")
    # No event yet: the example of the type's schema.
    [example] = client.get(tenant.url("/hooks/samples/training.completed")).json()
    assert example["type"] == "training.completed" and example["data"]["model_id"] == 2
    event = Event(
        type="training.completed",
        source="/arbiter/training",
        subject="models/41",
        org_id=tenant.org.pk,
        data={"run_id": 3, "model_id": 41, "version": 1, "artifact": "a/b", "model_name": "spam"},
    )
    with transaction.atomic(), org_scope(tenant.org.pk):
        on_public_event(event)
    [sample] = client.get(tenant.url("/hooks/samples/training.completed")).json()
    assert sample["data"] == {"run_id": 3, "model_id": 41, "version": 1, "model_name": "spam"}
    assert client.get(tenant.url("/hooks/samples/nope.never")).status_code == 404
    bad = client.post(tenant.url("/hooks"), {"target_url": URL, "event": "nope"}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("event:")
    assert client.delete(tenant.url(f"/hooks/{hook['id']}")).status_code == 204
    assert client.get(tenant.url("/hooks")).json() == []


def test_the_catalogue_lists_every_public_type_with_its_schema(tenant: Tenant) -> None:
    catalogue = tenant.client(["models:read"]).get("/api/v1/webhooks/event-types").json()
    types = {t["type"]: t for t in catalogue["event_types"]}
    for name in (
        "dataset.imported",
        "snapshot.created",
        "training.completed",
        "training.failed",
        "deployment.live",
        "deployment.failed",
        "deployment.stopped",
        "annotation.completed",
        "billing.quota_reached",
        "webhook.disabled",
    ):
        assert types[name]["version"] >= 1
        schema = types[name]["schema"]
        assert schema["$id"].endswith(f"{name}.v{types[name]['version']}.json") and schema["examples"]
    # Internal fields are not part of the public contract.
    assert "artifact" not in types["training.completed"]["schema"]["properties"]


def test_a_test_ping_appears_in_the_delivery_log_and_a_failed_delivery_can_be_resent(tenant: Tenant) -> None:
    client = tenant.client(["admin"])
    endpoint = client.post(tenant.url("/webhooks"), {"url": URL, "events": ["*"]}, format="json").json()
    ping = client.post(tenant.url(f"/webhooks/{endpoint['id']}/test"))
    assert ping.status_code == 202 and ping.json()["event_type"] == "webhook.test"
    log = client.get(tenant.url(f"/webhooks/{endpoint['id']}/deliveries")).json()
    assert log["count"] == 1 and log["results"][0]["status"] == "pending"
    assert client.get(tenant.url(f"/webhooks/{endpoint['id']}/deliveries?status=bogus")).status_code == 400
    delivery_id = ping.json()["id"]
    # Still pending: a resend is a conflict.
    assert (
        client.post(tenant.url(f"/webhooks/{endpoint['id']}/deliveries/{delivery_id}/retry")).status_code
        == 409
    )
    WebhookDelivery.objects.unscoped().filter(pk=delivery_id).update(status="failed")
    again = client.post(tenant.url(f"/webhooks/{endpoint['id']}/deliveries/{delivery_id}/retry"))
    assert again.status_code == 202 and again.json()["status"] == "pending"
    assert again.json()["webhook_id"] == ping.json()["webhook_id"]
    WebhookDelivery.objects.unscoped().filter(pk=delivery_id).update(status="failed")
    resent = client.post(
        tenant.url(f"/webhooks/{endpoint['id']}/resend"), {"since": "2000-01-01T00:00:00Z"}, format="json"
    )
    assert resent.status_code == 202 and resent.json() == {"resent": 1}


@pytest.mark.cross_tenant(
    "webhook-list",
    "webhook-detail",
    "webhook-rotate-secret",
    "webhook-test",
    "webhook-resend",
    "webhook-delivery-list",
    "webhook-delivery-detail",
    "webhook-delivery-retry",
    "hook-list",
    "hook-detail",
    "hook-samples",
)
def test_another_orgs_webhooks_are_404_everywhere(tenant: Tenant, victim: Tenant) -> None:
    owner = victim.client(["admin"])
    endpoint = owner.post(victim.url("/webhooks"), {"url": URL, "events": ["*"]}, format="json").json()
    hook = owner.post(
        victim.url("/hooks"), {"target_url": URL, "event": "training.completed"}, format="json"
    ).json()
    delivery = owner.post(victim.url(f"/webhooks/{endpoint['id']}/test")).json()
    WebhookDelivery.objects.unscoped().filter(pk=delivery["id"]).update(status="failed")
    e = f"/webhooks/{endpoint['id']}"
    d = f"{e}/deliveries/{delivery['id']}"
    attacker = tenant.client(["admin"])
    for org in (victim, tenant):
        assert_not_found(attacker.get(org.url(e)))
        assert_not_found(attacker.patch(org.url(e), {"enabled": False}, format="json"))
        assert_not_found(attacker.delete(org.url(e)))
        assert_not_found(attacker.post(org.url(f"{e}/rotate-secret"), {}, format="json"))
        assert_not_found(attacker.post(org.url(f"{e}/test")))
        assert_not_found(
            attacker.post(org.url(f"{e}/resend"), {"since": "2000-01-01T00:00:00Z"}, format="json")
        )
        assert_not_found(attacker.get(org.url(f"{e}/deliveries")))
        assert_not_found(attacker.get(org.url(d)))
        assert_not_found(attacker.post(org.url(f"{d}/retry")))
        assert_not_found(attacker.delete(org.url(f"/hooks/{hook['id']}")))
    assert_not_found(attacker.get(victim.url("/webhooks")))
    assert_not_found(attacker.get(victim.url("/hooks")))
    assert_not_found(
        attacker.post(victim.url("/hooks"), {"target_url": URL, "event": "training.completed"}, format="json")
    )
    assert_not_found(attacker.get(victim.url("/hooks/samples/training.completed")))
    assert (
        attacker.get(tenant.url("/webhooks")).json() == [] and attacker.get(tenant.url("/hooks")).json() == []
    )
    # Nothing of the victim's changed.
    assert WebhookEndpoint.objects.unscoped().filter(org_id=victim.org.pk, enabled=True).count() == 2
    assert WebhookDelivery.objects.unscoped().get(pk=delivery["id"]).status == "failed"


def test_the_console_creates_an_endpoint_shows_its_secret_once_and_its_deliveries(tenant: Tenant) -> None:
    browser = Client()
    browser.force_login(tenant.owner)
    page = browser.get(f"/console/{tenant.slug}/webhooks").content.decode()
    assert f'href="/console/{tenant.slug}/webhooks"' in page  # in the navigation
    created = browser.post(f"/console/{tenant.slug}/webhooks", {"url": URL, "events": ["training.completed"]})
    assert created.status_code == 200
    endpoint = WebhookEndpoint.objects.unscoped().get(org_id=tenant.org.pk)
    assert endpoint.secret in created.content.decode()
    detail = f"/console/{tenant.slug}/webhooks/{endpoint.pk}"
    assert endpoint.secret not in browser.get(detail).content.decode()
    assert browser.post(detail, {"action": "test"}).status_code == 302
    delivery = WebhookDelivery.objects.unscoped().get(endpoint=endpoint)
    listing = browser.get(detail).content.decode()
    assert delivery.message_id in listing and "webhook.test" in listing
    one = browser.get(f"{detail}/deliveries/{delivery.pk}").content.decode()
    assert delivery.message_id in one and "No attempt yet" in one
    bad = browser.post(f"/console/{tenant.slug}/webhooks", {"url": "ftp://x", "events": ["*"]})
    assert bad.status_code == 400 and "only https or http" in bad.content.decode()


@pytest.mark.cross_tenant("console-webhooks", "console-webhook", "console-webhook-delivery")
def test_console_webhook_pages_of_another_org_are_404(tenant: Tenant, victim: Tenant) -> None:
    owner = victim.client(["admin"])
    endpoint = owner.post(victim.url("/webhooks"), {"url": URL, "events": ["*"]}, format="json").json()
    delivery = owner.post(victim.url(f"/webhooks/{endpoint['id']}/test")).json()
    browser = Client()
    browser.force_login(tenant.owner)
    for slug in (victim.slug, tenant.slug):
        base = f"/console/{slug}/webhooks"
        assert_not_found(browser.get(f"{base}/{endpoint['id']}"))
        assert_not_found(browser.post(f"{base}/{endpoint['id']}", {"action": "delete"}))
        assert_not_found(browser.get(f"{base}/{endpoint['id']}/deliveries/{delivery['id']}"))
        assert_not_found(browser.post(f"{base}/{endpoint['id']}/deliveries/{delivery['id']}"))
    assert_not_found(browser.get(f"/console/{victim.slug}/webhooks"))
    assert WebhookEndpoint.objects.unscoped().filter(pk=endpoint["id"]).exists()
