"""The ledger counts each billable unit once per org, meter and day; plans come from configuration, change at
once, and every change is announced as `entitlements.changed` for the services that enforce it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from arbiter.events.envelope import Event
from arbiter.testing.tenants import Tenant, assert_not_found
from tests.billing.conftest import deliver, meters, published, today, usage_event

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.mark.cross_tenant("billing", "billing-usage")
def test_usage_events_enter_the_ledger_once_per_event_and_show_per_meter_and_day(
    tenant: Tenant, victim: Tenant
) -> None:
    org = tenant.org.pk
    first = usage_event(org, "classification", 64)
    deliver(first)
    deliver(first)  # redelivered: counted once
    deliver(usage_event(org, "classification", 6))
    deliver(usage_event(org, "playground", 2))
    yesterday = datetime.now(UTC) - timedelta(days=1)
    deliver(usage_event(org, "classification", 5, when=yesterday))
    deliver(
        Event(
            type="training.completed",
            source="/arbiter/training",
            org_id=org,
            subject="models/3/versions/1",
            data={"run_id": 1, "model_id": 3, "version": 1, "artifact": "a.tar.gz", "duration_seconds": 61.0},
        )
    )
    deliver(usage_event(victim.org.pk, "classification", 1000))

    reader = tenant.client(["billing:read"])
    body = reader.get(tenant.url("/billing")).json()
    assert body["plan"] == "free" and body["paid"] is False
    by_meter = meters(body)
    period_start = datetime.now(UTC).date().replace(day=1)
    expected_classifications = 70 + (5 if yesterday.date() >= period_start else 0)
    assert by_meter["classification"]["used"] == expected_classifications
    assert by_meter["classification"]["included"] == 10_000
    assert by_meter["classification"]["remaining"] == 10_000 - expected_classifications
    assert by_meter["training_minute"]["used"] == 2  # 61 s: two started minutes
    assert by_meter["playground"] == {
        **by_meter["playground"],
        "included": 500,
        "per_model": True,
        "remaining": None,
        "used": 2,
    }

    usage = reader.get(tenant.url(f"/billing/usage?from={yesterday.date().isoformat()}&meter=classification"))
    assert usage.status_code == 200, usage.content
    assert usage.json()["days"] == [
        {"day": yesterday.date().isoformat(), "meter": "classification", "units": 5},
        {"day": today(), "meter": "classification", "units": 70},
    ]
    assert usage.json()["totals"] == {"classification": 75}

    bad = reader.get(tenant.url("/billing/usage?meter=gpu_hours"))
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("meter:")
    assert (
        reader.get(tenant.url("/billing/usage?from=yesterday")).json()["error"]["message"].startswith("from:")
    )

    # Another org sees its own numbers, never these; its URL under this org's slug is a 404.
    thief = victim.client(["admin"])
    assert meters(thief.get(victim.url("/billing")).json())["classification"]["used"] == 1000
    assert_not_found(thief.get(tenant.url("/billing")))
    assert_not_found(thief.get(tenant.url("/billing/usage")))


@pytest.mark.cross_tenant("billing-plan")
def test_an_admin_changes_the_plan_at_once_and_the_change_is_announced(
    tenant: Tenant, victim: Tenant
) -> None:
    url = tenant.url("/billing/plan")
    assert tenant.client(["billing:read"]).put(url, {"plan": "pro"}, format="json").status_code == 403
    refused = tenant.client(["admin"]).put(url, {"plan": "gold"}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("plan: 'gold' is not a plan")
    assert published(org_id=tenant.org.pk) == []

    changed = tenant.client(["admin"]).put(url, {"plan": "pro"}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["plan"] == "pro" and changed.json()["paid"] is True
    assert meters(changed.json())["classification"]["overage"] is True
    (announced,) = published(org_id=tenant.org.pk)
    assert announced.data["plan"] == "pro" and announced.data["payment_ok"] is True
    assert announced.data["valid_until"] is not None  # a paid plan: valid for the grace period
    assert announced.data["meters"]["classification"] == {"included": 100_000, "overage": True, "used": 0}

    assert_not_found(victim.client(["admin"]).put(url, {"plan": "enterprise"}, format="json"))
    assert tenant.client().get(tenant.url("/billing")).json()["plan"] == "pro"

    call_command("billing", "plan", tenant.slug, "enterprise")
    latest = published(org_id=tenant.org.pk)[-1]
    assert latest.data["plan"] == "enterprise" and latest.data["sequence"] > announced.data["sequence"]
    with pytest.raises(CommandError, match="not a plan"):
        call_command("billing", "plan", tenant.slug, "gold")
    with pytest.raises(CommandError, match="no org"):
        call_command("billing", "plan", "no-such-org", "pro")


def test_running_out_of_an_allowance_is_announced_once(
    tenant: Tenant, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(
        ARBITER_BILLING_PLANS='{"free": {"meters": {"classification": {"included": 5}}}}'
    )
    org = tenant.org.pk
    deliver(usage_event(org, "classification", 3))
    assert published(org_id=org) == []
    deliver(usage_event(org, "classification", 3))
    deliver(usage_event(org, "classification", 3))
    (exhausted,) = published(org_id=org)
    assert exhausted.data["reason"] == "usage"
    assert exhausted.data["meters"]["classification"] == {"included": 5, "overage": False, "used": 6}
    # Automation hears of it too (webhooks' billing.quota_reached), once.
    (reached,) = published("billing.quota_reached", org_id=org)
    assert {k: reached.data[k] for k in ("meter", "plan", "limit", "used")} == {
        "meter": "classification",
        "plan": "free",
        "limit": 5,
        "used": 6,
    }


def test_the_heartbeat_announces_every_org_and_ends_a_paid_plan_whose_payment_failed(
    tenant: Tenant, victim: Tenant
) -> None:
    from services.billing.logic import entitlements_refresh, plan_set
    from services.billing.models import Account

    plan_set(org_id=tenant.org.pk, plan="pro")
    plan_set(org_id=victim.org.pk, plan="pro")
    Account.objects.unscoped().filter(org_id=victim.org.pk).update(
        payment_failed_at=datetime.now(UTC) - timedelta(days=30)
    )
    assert entitlements_refresh() == 2
    assert published(org_id=tenant.org.pk)[-1].data["reason"] == "refresh"
    downgraded = published(org_id=victim.org.pk)[-1]
    assert downgraded.data["plan"] == "free" and downgraded.data["reason"] == "plan"
    notice = victim.client().get(victim.url("/billing")).json()["notice"]
    assert "payment failed" in notice and "free plan" in notice
