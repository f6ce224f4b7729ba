"""With Stripe configured: usage reaches Stripe as meter events once, whatever is retried; what Stripe refuses
stays queued with its reason; signed webhooks are applied once and forged or stale ones change nothing; the org
sees its invoices and gets a customer-portal link. Stripe is a fake on loopback, spoken to through the SDK."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.test import Client

from arbiter.entitlements import METER_UNITS
from arbiter.testing.tenants import Tenant, assert_not_found
from services.billing import logic, payments
from services.billing.models import Account, LedgerEntry, MeterReport, StripeEvent
from tests.billing.conftest import deliver, published, usage_event
from tests.billing.fake_stripe import FakeStripe, running_fake_stripe, sign

pytestmark = pytest.mark.django_db(databases="__all__")

SECRET = "whsec_arbiter_test"


@pytest.fixture
def fake_stripe(override_arbiter_settings: Any) -> Iterator[FakeStripe]:
    with running_fake_stripe() as fake:
        override_arbiter_settings(
            STRIPE_API_KEY="sk_test_arbiter",
            STRIPE_WEBHOOK_SECRET=SECRET,
            ARBITER_STRIPE_API_BASE=fake.url,
            ARBITER_BILLING_REPORT_BATCH="2",
        )
        yield fake


def pro_prices() -> None:
    """What the operator sets up in Stripe: the pro plan's metered prices, on the meters Arbiter made."""
    stripe_client = payments.client()
    assert stripe_client is not None
    for meter, meter_id in payments.meters_ensure(stripe_client=stripe_client).items():
        stripe_client.v1.prices.create(
            params={
                "currency": "usd",
                "unit_amount_decimal": "0.1",
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
                "product_data": {"name": f"Arbiter {meter}"},
                "lookup_key": payments.price_lookup_key(plan="pro", meter=meter),
            }
        )


def ledger_totals() -> dict[tuple[str, str], int]:
    customers = dict(Account.objects.unscoped().values_list("org_id", "stripe_customer_id"))
    rows = LedgerEntry.objects.unscoped().values("org_id", "meter").annotate(units=Sum("units"))
    return {(customers[r["org_id"]], payments.event_name(r["meter"])): int(r["units"]) for r in rows}


def test_usage_reaches_stripe_once_and_a_refused_report_stays_queued_with_its_reason(
    tenant: Tenant, victim: Tenant, fake_stripe: FakeStripe
) -> None:
    pro_prices()
    org, other = tenant.org.pk, victim.org.pk
    logic.plan_set(org_id=org, plan="pro")
    deliver(usage_event(org, "classification", 64))
    deliver(usage_event(org, "classification", 6))
    deliver(usage_event(org, "classification", 3, when=datetime.now(UTC) - timedelta(days=1)))
    deliver(usage_event(org, "playground", 2))
    deliver(usage_event(other, "classification", 5))

    call_command("billing", "report")

    account = Account.objects.unscoped().get(org_id=org)
    cus = account.stripe_customer_id
    victim_cus = Account.objects.unscoped().get(org_id=other).stripe_customer_id
    assert cus and victim_cus and cus != victim_cus
    assert fake_stripe.totals() == {
        (cus, "arbiter_classification"): 73,
        (cus, "arbiter_playground"): 2,
        (victim_cus, "arbiter_classification"): 5,
    }
    assert fake_stripe.totals() == ledger_totals()
    # The pro org is subscribed to the plan's metered prices; the free org has no subscription.
    [subscription] = fake_stripe.of("subscription")
    assert subscription["customer"] == cus and len(subscription["items"]["data"]) == len(METER_UNITS)
    assert account.stripe_subscription_id == subscription["id"] and account.subscription_status == "active"
    assert published(org_id=org)[-1].data["payment_ok"] is True

    # Another round sends nothing again; new usage is sent alone.
    sent = len(fake_stripe.meter_events)
    call_command("billing", "report")
    assert len(fake_stripe.meter_events) == sent
    deliver(usage_event(org, "classification", 4))
    call_command("billing", "report")
    assert fake_stripe.totals()[(cus, "arbiter_classification")] == 77

    # Stripe refuses the victim's usage: it stays queued, with Stripe's reason, until Stripe takes it.
    fake_stripe.refuse_customers.add(victim_cus)
    deliver(usage_event(other, "classification", 9))
    call_command("billing", "report")
    refused = MeterReport.objects.unscoped().get(org_id=other, sent_at__isnull=True)
    assert "No such customer" in refused.last_error and refused.attempts == 1
    page = victim.session_client().get(f"/console/{victim.slug}/billing")
    assert page.status_code == 200 and "No such customer" in page.content.decode()
    fake_stripe.refuse_customers.clear()
    call_command("billing", "report")
    refused.refresh_from_db()
    assert refused.sent_at is not None and refused.last_error == "" and refused.attempts == 2
    assert fake_stripe.totals() == ledger_totals()
    assert fake_stripe.totals()[(victim_cus, "arbiter_classification")] == 14


def test_a_resent_report_is_counted_once_by_its_identifier(tenant: Tenant, fake_stripe: FakeStripe) -> None:
    """A report Stripe took but that was not marked sent (the worker died) is sent again with the same
    identifier; Stripe answers that it has it, and the report is marked sent without counting twice."""
    deliver(usage_event(tenant.org.pk, "classification", 8))
    call_command("billing", "report")
    report = MeterReport.objects.unscoped().get()
    MeterReport.objects.unscoped().filter(pk=report.pk).update(sent_at=None)
    call_command("billing", "report")
    report.refresh_from_db()
    assert report.sent_at is not None and report.last_error == "" and report.attempts == 2
    assert fake_stripe.requests.count(("POST", "/v1/billing/meter_events")) == 2
    assert list(fake_stripe.totals().values()) == [8]


def _webhook(client: Client, event: dict[str, Any], *, signature: str | None = None) -> Any:
    payload = json.dumps(event)
    return client.post(
        "/webhooks/stripe",
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature if signature is not None else sign(payload, SECRET),
    )


def _event(kind: str, obj: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }


def test_signed_webhooks_are_applied_once_and_forged_or_stale_ones_change_nothing(
    tenant: Tenant, fake_stripe: FakeStripe
) -> None:
    org = tenant.org.pk
    logic.plan_set(org_id=org, plan="pro")
    Account.objects.unscoped().filter(org_id=org).update(
        stripe_customer_id="cus_9", stripe_subscription_id="sub_9", subscription_status="active"
    )
    client = Client()
    failed = _event("invoice.payment_failed", {"object": "invoice", "customer": "cus_9"}, "evt_1")

    forged = _webhook(client, failed, signature=sign(json.dumps(failed), "whsec_not_ours"))
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "invalid_signature"
    stale = _webhook(client, failed, signature=sign(json.dumps(failed), SECRET, int(time.time()) - 301))
    assert stale.status_code == 400 and "Stripe-Signature" in stale.json()["error"]["message"]
    assert _webhook(client, failed, signature="").status_code == 400
    assert Account.objects.unscoped().get(org_id=org).payment_failed_at is None
    assert not StripeEvent.objects.exists()

    announced = len(published(org_id=org))
    answer = _webhook(client, failed)
    assert answer.status_code == 200 and answer.json()["applied"] is True
    failed_at = Account.objects.unscoped().get(org_id=org).payment_failed_at
    assert failed_at is not None
    assert published(org_id=org)[-1].data["reason"] == "payment"
    # Replayed: acknowledged, applied once.
    replay = _webhook(client, failed)
    assert replay.status_code == 200 and replay.json()["applied"] is False
    assert len(published(org_id=org)) == announced + 1
    assert StripeEvent.objects.filter(event_id="evt_1").count() == 1

    # The grace period runs out: the heartbeat moves the org to the free plan, saying why.
    logic.entitlements_refresh(now=failed_at + timedelta(days=8))
    account = Account.objects.unscoped().get(org_id=org)
    assert account.plan == "free" and "payment failed" in account.notice
    logic.plan_set(org_id=org, plan="pro")
    _webhook(client, _event("invoice.paid", {"object": "invoice", "customer": "cus_9"}, "evt_2"))
    assert Account.objects.unscoped().get(org_id=org).payment_failed_at is None

    past_due = {"object": "subscription", "id": "sub_9", "customer": "cus_9", "status": "past_due"}
    _webhook(client, _event("customer.subscription.updated", past_due, "evt_3"))
    assert Account.objects.unscoped().get(org_id=org).subscription_status == "past_due"
    assert published(org_id=org)[-1].data["payment_ok"] is False

    ended = {**past_due, "status": "canceled"}
    _webhook(client, _event("customer.subscription.deleted", ended, "evt_4"))
    account = Account.objects.unscoped().get(org_id=org)
    assert account.plan == "free" and account.stripe_subscription_id == ""
    assert "canceled" in account.notice
    assert published(org_id=org)[-1].data["plan"] == "free"


@pytest.mark.cross_tenant("billing-invoices", "billing-portal")
def test_invoices_with_hosted_links_and_a_portal_link_for_the_org_only(
    tenant: Tenant, victim: Tenant, fake_stripe: FakeStripe
) -> None:
    deliver(usage_event(tenant.org.pk, "classification", 1))
    call_command("billing", "report")
    cus = Account.objects.unscoped().get(org_id=tenant.org.pk).stripe_customer_id
    invoice = fake_stripe.add_invoice(cus, amount_due=1234, status="open")
    fake_stripe.add_invoice("cus_someone_else")

    reader = tenant.client(["billing:read"])
    body = reader.get(tenant.url("/billing/invoices")).json()
    assert body["stripe"] is True
    assert [(i["id"], i["amount_due"], i["status"]) for i in body["invoices"]] == [
        (invoice["id"], 1234, "open")
    ]
    assert body["invoices"][0]["hosted_invoice_url"] == invoice["hosted_invoice_url"]

    assert reader.post(tenant.url("/billing/portal"), {}, format="json").status_code == 403
    admin = tenant.client(["admin"])
    portal = admin.post(
        tenant.url("/billing/portal"), {"return_url": "https://app.example/back"}, format="json"
    )
    assert portal.status_code == 200 and portal.json()["url"].startswith(fake_stripe.url + "/portal/")
    [session] = fake_stripe.of("billing_portal.session")
    assert session["customer"] == cus and session["return_url"] == "https://app.example/back"
    bad = admin.post(tenant.url("/billing/portal"), {"return_url": "not a url"}, format="json")
    assert bad.status_code == 400 and "return_url" in json.dumps(bad.json())

    thief = victim.client(["admin"])
    assert thief.get(victim.url("/billing/invoices")).json()["invoices"] == []
    assert_not_found(thief.get(tenant.url("/billing/invoices")))
    assert_not_found(thief.post(tenant.url("/billing/portal"), {}, format="json"))


def test_without_stripe_there_are_no_invoices_and_no_portal(
    tenant: Tenant, capsys: pytest.CaptureFixture[str]
) -> None:
    deliver(usage_event(tenant.org.pk, "classification", 3))
    call_command("billing", "report")
    assert "Stripe is not configured" in capsys.readouterr().out
    assert not MeterReport.objects.unscoped().exists()
    assert Account.objects.unscoped().get(org_id=tenant.org.pk).stripe_customer_id == ""
    admin = tenant.client(["admin"])
    assert admin.get(tenant.url("/billing/invoices")).json() == {"stripe": False, "invoices": []}
    portal = admin.post(tenant.url("/billing/portal"), {}, format="json")
    assert portal.status_code == 409 and portal.json()["error"]["code"] == "stripe_not_configured"
    assert Client().post("/webhooks/stripe", data="{}", content_type="application/json").status_code == 404


@pytest.mark.cross_tenant("console-billing-portal")
def test_the_billing_page_lists_invoices_and_sends_an_admin_to_the_stripe_portal(
    tenant: Tenant, victim: Tenant, fake_stripe: FakeStripe
) -> None:
    logic.plan_set(org_id=tenant.org.pk, plan="pro")
    deliver(usage_event(tenant.org.pk, "classification", 1))
    call_command("billing", "report")  # no pro prices at Stripe: a customer, no subscription
    cus = Account.objects.unscoped().get(org_id=tenant.org.pk).stripe_customer_id
    invoice = fake_stripe.add_invoice(cus, amount_due=1999, status="open")

    admin = tenant.session_client()
    html = admin.get(f"/console/{tenant.slug}/billing").content.decode()
    row = re.search(rf'<tr data-invoice="{invoice["id"]}">(.*?)</tr>', html, re.S)
    assert row is not None and "19.99 USD" in row.group(1) and invoice["hosted_invoice_url"] in row.group(1)
    assert "Add a payment method to upgrade" in html

    went = admin.post(f"/console/{tenant.slug}/billing/portal")
    assert went.status_code == 302 and went["Location"].startswith(fake_stripe.url + "/portal/")
    [session] = fake_stripe.of("billing_portal.session")
    assert session["customer"] == cus and session["return_url"].endswith(f"/console/{tenant.slug}/billing")

    # Another org's admin reaches neither this org's page nor its portal.
    thief = victim.session_client()
    assert thief.post(f"/console/{tenant.slug}/billing/portal").status_code == 404
    assert len(fake_stripe.of("billing_portal.session")) == 1


def test_stripe_failing_leaves_usage_queued_and_the_next_round_sends_it(
    tenant: Tenant, fake_stripe: FakeStripe
) -> None:
    deliver(usage_event(tenant.org.pk, "classification", 5))
    fake_stripe.meter_events_status = 500
    with pytest.raises(CommandError, match="Try again later"):
        call_command("billing", "report")
    report = MeterReport.objects.unscoped().get()
    assert report.sent_at is None and report.last_error == "" and report.attempts == 0
    assert ("POST", "/v1/billing/meter_events") in fake_stripe.requests and fake_stripe.totals() == {}
    fake_stripe.meter_events_status = None
    call_command("billing", "report")
    report.refresh_from_db()
    assert report.sent_at is not None and list(fake_stripe.totals().values()) == [5]
