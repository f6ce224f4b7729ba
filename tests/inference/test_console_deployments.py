"""Console pages of the inference service: deploy a version, watch it go live, call it, stop it; usage."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.inference.models import Deployment
from tests.inference.conftest import deliver, published, training_completed

pytestmark = pytest.mark.django_db(databases="__all__")


def browser(tenant: Tenant, role: str | None = None) -> Client:
    client = Client()
    client.force_login(tenant.add_member(role)[0] if role else tenant.owner)
    return client


def deploy(client: Client, tenant: Tenant, trained: dict, **fields: str) -> object:
    return client.post(
        f"/console/{tenant.slug}/deployments/new",
        {"version": f"{trained['model_id']}:{trained['version']}", **fields},
    )


def go_live(deployment_id: int) -> None:
    (requested,) = published("deployment.requested", deployment_id=deployment_id)
    deliver(requested)


def test_without_a_trained_version_the_page_points_at_models(tenant: Tenant) -> None:
    page = browser(tenant).get(f"/console/{tenant.slug}/deployments")
    assert page.status_code == 200
    assert b"Nothing deployed yet" in page.content and b"Train a model first" in page.content


@override_settings(ARBITER_PUBLIC_URL="https://arbiter.example.com")
def test_deploy_watch_it_go_live_and_call_it_with_the_snippet(tenant: Tenant, artifact_key: str) -> None:
    trained = training_completed(org_id=tenant.org.pk, artifact=artifact_key)
    client = browser(tenant)
    form = client.get(f"/console/{tenant.slug}/deployments/new?model={trained['model_id']}&version=1")
    assert f'value="{trained["model_id"]}:1" selected'.encode() in form.content

    created = deploy(client, tenant, trained, name="toxicity-prod")

    with org_scope(tenant.org.pk):
        deployment = Deployment.objects.get()
    assert created.status_code == 302
    assert created["Location"] == f"/console/{tenant.slug}/deployments/{deployment.pk}"
    pending = client.get(created["Location"]).content.decode()
    status = f"{created['Location']}/status"
    assert "Going live" in pending and f'hx-get="{status}"' in pending and 'hx-trigger="every 2s"' in pending
    waiting = client.get(status, headers={"HX-Request": "true"})
    assert waiting.status_code == 204 and "HX-Refresh" not in waiting  # nothing to swap: htmx polls on

    go_live(deployment.pk)

    settled = client.get(status, headers={"HX-Request": "true"})
    assert settled.status_code == 200 and settled["HX-Refresh"] == "true"  # htmx reloads the page
    live = client.get(created["Location"]).content.decode()
    assert "Going live" not in live and 'id="try-form"' in live and status not in live
    curl = html.unescape(re.search(r'<pre id="code-curl">(.*?)</pre>', live, re.S).group(1))
    url = f"https://arbiter.example.com/api/v1/orgs/{tenant.slug}/deployments/{deployment.pk}/classify"
    assert curl.startswith(f"curl {url} ")
    openai = html.unescape(re.search(r'<pre id="code-openai">(.*?)</pre>', live, re.S).group(1))
    assert 'base_url="https://arbiter.example.com/v1"' in openai and 'model="toxicity-prod"' in openai
    body = json.loads(re.search(r"-d '(.*)'", curl).group(1))
    key = APIClient()
    key.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.key(['inference'])}")
    answer = key.post(url.removeprefix("https://arbiter.example.com"), body, format="json")
    assert answer.status_code == 200
    assert [r["toxicity"]["label"] for r in answer.json()["results"]] == ["toxic", "safe"]
    usage = client.get(f"/console/{tenant.slug}/usage").content.decode()
    data = json.loads(
        re.search(r'<script id="usage-data" type="application/json">(.*?)</script>', usage, re.S).group(1)
    )
    assert data["days"][-1] == timezone.now().date().isoformat()
    (series,) = data["series"]
    assert series["name"] == "toxicity-prod" and series["values"][-1] == {"requests": 1, "units": 2}


def test_stop_and_a_taken_name_say_what_happened(tenant: Tenant, artifact_key: str) -> None:
    trained = training_completed(org_id=tenant.org.pk, artifact=artifact_key)
    client = browser(tenant)
    deploy(client, tenant, trained, name="prod")
    taken = deploy(client, tenant, trained, name="prod")
    assert taken.status_code == 400 and b"already active" in taken.content
    with org_scope(tenant.org.pk):
        deployment = Deployment.objects.get()
    stopped = client.post(f"/console/{tenant.slug}/deployments/{deployment.pk}/stop")
    assert stopped.status_code == 302
    page = client.get(stopped["Location"]).content.decode()
    assert "is stopped" in page and "Stopped" in page and "Deploy this version again" in page
    with org_scope(tenant.org.pk):
        assert Deployment.objects.get().status == "stopped"
    listing = client.get(f"/console/{tenant.slug}/deployments").content.decode()
    assert "prod" in listing and "stopped" in listing


def test_a_viewer_sees_deployments_and_usage_but_cannot_change_them(
    tenant: Tenant, artifact_key: str
) -> None:
    trained = training_completed(org_id=tenant.org.pk, artifact=artifact_key)
    deploy(browser(tenant), tenant, trained)
    with org_scope(tenant.org.pk):
        deployment = Deployment.objects.get()
    viewer = browser(tenant, "viewer")
    page = viewer.get(f"/console/{tenant.slug}/deployments/{deployment.pk}")
    assert page.status_code == 200 and b">Stop</button>" not in page.content
    assert viewer.get(f"/console/{tenant.slug}/usage").status_code == 200
    assert viewer.get(f"/console/{tenant.slug}/deployments/new").status_code == 403
    assert viewer.post(f"/console/{tenant.slug}/deployments/{deployment.pk}/stop").status_code == 403


@pytest.mark.cross_tenant(
    "console-deployments",
    "console-deployment-create",
    "console-deployment",
    "console-deployment-stop",
    "console-usage",
    "console-deployment-status",
)
def test_deployment_pages_of_another_org_are_404(tenant: Tenant, victim: Tenant, artifact_key: str) -> None:
    trained = training_completed(org_id=victim.org.pk, artifact=artifact_key)
    deploy(browser(victim), victim, trained)
    with org_scope(victim.org.pk):
        deployment = Deployment.objects.get()
    attacker = browser(tenant)
    for path in ["deployments", "deployments/new", "usage", f"deployments/{deployment.pk}"]:
        assert_not_found(attacker.get(f"/console/{victim.slug}/{path}"))
    assert_not_found(attacker.get(f"/console/{tenant.slug}/deployments/{deployment.pk}"))
    for org in (victim.slug, tenant.slug):
        assert_not_found(attacker.get(f"/console/{org}/deployments/{deployment.pk}/status"))
    for org in (victim.slug, tenant.slug):
        assert_not_found(attacker.post(f"/console/{org}/deployments/{deployment.pk}/stop"))
    # The victim's version cannot be deployed into the attacker's org either.
    mine = deploy(attacker, tenant, trained)
    assert mine.status_code == 400 and b"no trained version" in mine.content
    with org_scope(victim.org.pk):
        assert Deployment.objects.get().status == "pending"
    with org_scope(tenant.org.pk):
        assert not Deployment.objects.exists()
