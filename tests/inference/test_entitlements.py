"""Plans enforced at the edge: classify and the playground answer 402 or 429 from billing's announced
entitlements (a read model of this service), never by asking billing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import transaction

from arbiter.entitlements import entitlements_cache_clear
from arbiter.events.envelope import Event
from arbiter.events.handlers import handlers_for
from arbiter.events.testing import consumer_running, relay_outbox, wait_for
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant
from services.billing import logic as billing
from services.billing.models import LedgerEntry
from tests.billing.conftest import deliver, published
from tests.inference.conftest import InferenceApi


def announce(org_id: int) -> Event:
    """Hand billing's newest announcement of the org to this service, as its consumer would."""
    event = published(org_id=org_id)[-1]
    deliver(event, service="inference")
    return event


def record(org_id: int, meter: str, units: int) -> None:
    with transaction.atomic(using="billing"), org_scope(org_id):
        billing.usage_record(
            org_id=org_id,
            event_id=f"test-{meter}-{units}-{datetime.now(UTC).timestamp()}",
            meter=meter,
            units=units,
            occurred_at=datetime.now(UTC),
        )


@pytest.fixture
def deployed(api: InferenceApi, artifact_key: str) -> dict[str, Any]:
    entitlements_cache_clear()
    trained = api.train(artifact_key)
    return api.deploy({"model": trained["model_id"]})


@pytest.mark.django_db(databases="__all__")
def test_a_free_org_past_its_monthly_classifications_gets_429_until_the_period_ends(
    api: InferenceApi, deployed: dict[str, Any], override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(
        ARBITER_BILLING_PLANS='{"free": {"meters": {"classification": {"included": 4}}}}'
    )
    org = api.tenant.org.pk
    assert api.classify(deployed["id"], ["one", "two", "three"]).status_code == 200
    record(org, "classification", 4)
    announce(org)

    refused = api.classify(deployed["id"], ["one more"])
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"] == {
        **error["details"],
        "meter": "classification",
        "limit": 4,
        "used": 4,
        "plan": "free",
    }
    assert (
        "upgrade to a paid plan" in error["message"]
        and "includes 4 classifications a month" in error["message"]
    )
    period_end = datetime.fromisoformat(error["details"]["period_end"]).replace(tzinfo=UTC)
    retry_after = int(refused["Retry-After"])
    assert abs((datetime.now(UTC) + timedelta(seconds=retry_after)) - period_end) < timedelta(minutes=1)

    # Upgrading lifts it at once: the pro plan bills what is beyond its included classifications.
    billing.plan_set(org_id=org, plan="pro")
    announce(org)
    assert api.classify(deployed["id"], ["one more"]).status_code == 200


@pytest.mark.django_db(databases="__all__")
def test_a_paid_plan_without_a_payment_method_gets_402_beyond_what_it_includes(
    api: InferenceApi, deployed: dict[str, Any], override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(
        STRIPE_API_KEY="sk_test_123",
        ARBITER_BILLING_PLANS='{"pro": {"meters": {"classification": {"included": 2}}}}',
    )
    org = api.tenant.org.pk
    billing.plan_set(org_id=org, plan="pro")
    record(org, "classification", 2)
    announced = announce(org)
    assert announced.data["payment_ok"] is False
    refused = api.classify(deployed["id"], ["x"])
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "payment_required"
    assert "payment method" in refused.json()["error"]["message"]


@pytest.mark.django_db(databases="__all__")
def test_the_playground_free_queries_per_model_come_from_the_plan(
    api: InferenceApi, artifact_key: str, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_BILLING_PLANS='{"free": {"meters": {"playground": {"included": 2}}}}')
    entitlements_cache_clear()
    trained = api.train(artifact_key)
    url = api.url(f"/models/{trained['model_id']}/versions/1/playground")
    assert api.client.post(url, {"input": ["a", "b"]}, format="json").json()["quota"] == {
        "used": 2,
        "free": 2,
        "remaining": 0,
    }
    refused = api.client.post(url, {"input": "c"}, format="json")
    assert refused.status_code == 402
    assert refused.json()["error"]["details"]["meter"] == "playground"
    assert (
        "This model's 2 free playground queries on the free plan are used up"
        in refused.json()["error"]["message"]
    )

    # On a paid plan the queries beyond the free ones are billed, not refused.
    billing.plan_set(org_id=api.tenant.org.pk, plan="pro")
    announce(api.tenant.org.pk)
    answered = api.client.post(url, {"input": "c"}, format="json")
    assert answered.status_code == 200 and answered.json()["quota"]["used"] == 3


@pytest.mark.django_db(databases="__all__")
def test_a_paid_plan_billing_stopped_confirming_falls_back_to_the_default_plan_after_the_grace_period(
    api: InferenceApi, deployed: dict[str, Any], override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(
        ARBITER_BILLING_PLANS='{"free": {"meters": {"classification": {"included": 3}}}}'
    )
    org = api.tenant.org.pk
    billing.plan_set(org_id=org, plan="pro")
    event = published(org_id=org)[-1]
    # Billing's last word before it went quiet: 5 classifications used, valid until a minute ago.
    stale = {**event.data, "sequence": event.data["sequence"] + 1}
    stale["meters"] = {
        **event.data["meters"],
        "classification": {"included": 100_000, "overage": True, "used": 5},
    }
    stale["valid_until"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    deliver(
        Event(type=event.type, source=event.source, org_id=org, subject=event.subject, data=event.data),
        "inference",
    )
    assert api.classify(deployed["id"], ["within the grace period"]).status_code == 200
    deliver(
        Event(type=event.type, source=event.source, org_id=org, subject=event.subject, data=stale),
        "inference",
    )
    refused = api.classify(deployed["id"], ["after it"])
    assert refused.status_code == 429 and refused.json()["error"]["details"]["plan"] == "free"
    # An older announcement arriving late changes nothing.
    deliver(
        Event(type=event.type, source=event.source, org_id=org, subject=event.subject, data=event.data),
        "inference",
    )
    assert api.classify(deployed["id"], ["still"]).status_code == 429


@pytest.mark.django_db(databases="__all__")
def test_training_is_refused_once_the_training_minutes_are_used_up(
    tenant: Tenant, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(
        ARBITER_BILLING_PLANS='{"free": {"meters": {"training_minute": {"included": 10}}}}'
    )
    entitlements_cache_clear()
    org = tenant.org.pk
    record(org, "training_minute", 10)
    deliver(published(org_id=org)[-1], service="training")
    refused = tenant.client(["admin"]).post(
        tenant.url("/models"), {"name": "m", "snapshots": [1]}, format="json"
    )
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"]["details"]["meter"] == "training_minute"


@pytest.mark.slow
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_usage_reaches_billing_and_its_verdict_reaches_the_edge_through_kafka(
    kafka_bootstrap: str, api: InferenceApi, deployed: dict[str, Any], override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(
        ARBITER_BILLING_PLANS='{"free": {"meters": {"classification": {"included": 3}}}}'
    )
    org = api.tenant.org.pk
    assert api.classify(deployed["id"], ["one", "two"]).status_code == 200
    assert api.classify(deployed["id"], ["three"]).status_code == 200
    with (
        consumer_running(
            consumer="billing",
            alias="billing",
            handlers=handlers_for("billing"),
            bootstrap_servers=kafka_bootstrap,
        ),
        consumer_running(
            consumer="inference",
            alias="inference",
            handlers=handlers_for("inference"),
            bootstrap_servers=kafka_bootstrap,
        ),
    ):
        relay_outbox(alias="inference", bootstrap_servers=kafka_bootstrap)
        wait_for(lambda: LedgerEntry.objects.unscoped().filter(org_id=org).count() == 2, timeout_s=60)
        relay_outbox(alias="billing", bootstrap_servers=kafka_bootstrap)
        wait_for(lambda: api.classify(deployed["id"], ["four"]).status_code == 429, timeout_s=60)
