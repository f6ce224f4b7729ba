"""The console's Billing page: plan, allowances, usage per meter and day, and choosing a plan (admins)."""

from __future__ import annotations

import json
import re

import pytest

from arbiter.testing.tenants import Tenant
from tests.billing.conftest import deliver, published, today, usage_event

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.mark.cross_tenant("console-billing", "console-billing-plan")
def test_the_billing_page_shows_the_plan_what_remains_and_usage_per_day(
    tenant: Tenant, victim: Tenant
) -> None:
    deliver(usage_event(tenant.org.pk, "classification", 40))
    deliver(usage_event(tenant.org.pk, "playground", 3))
    page = tenant.session_client().get(f"/console/{tenant.slug}/billing")
    assert page.status_code == 200
    html = page.content.decode()
    assert "The <strong>Free</strong> plan" in html
    row = re.search(r'<tr data-meter="classification">(.*?)</tr>', html, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert [cell.strip() for cell in cells[:4]] == ["Classifications", "10000", "40", "9960"]
    chart = json.loads(
        re.search(r'<script id="billing-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    assert chart["days"][-1] == today()
    assert {s["name"]: s["values"][-1] for s in chart["series"]} == {
        "classifications": 40,
        "playground queries": 3,
    }
    assert f'href="/console/{tenant.slug}/billing"' in html  # in the navigation

    changed = tenant.session_client().post(
        f"/console/{tenant.slug}/billing/plan", {"plan": "pro"}, follow=True
    )
    assert "now on the pro plan" in changed.content.decode()
    assert published(org_id=tenant.org.pk)[-1].data["plan"] == "pro"

    viewer, _ = tenant.add_member("viewer")
    as_viewer = tenant.session_client(viewer)
    assert "Change plan" not in as_viewer.get(f"/console/{tenant.slug}/billing").content.decode()
    assert as_viewer.post(f"/console/{tenant.slug}/billing/plan", {"plan": "free"}).status_code == 403

    outsider = victim.session_client()
    assert outsider.get(f"/console/{tenant.slug}/billing").status_code == 404
    assert outsider.post(f"/console/{tenant.slug}/billing/plan", {"plan": "free"}).status_code == 404
    assert published(org_id=tenant.org.pk)[-1].data["plan"] == "pro"
