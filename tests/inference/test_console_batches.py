"""The console's batch classify (Hive's batch tasks): upload a CSV or JSONL, pick a deployment, watch it run,
download the results as CSV or JSONL. The batch worker and the services' events run as in
`test_batches_compat` (`Pump`); the page is looked at in Chromium too."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.inference.batches import batch_process
from services.inference.models import Batch
from tests.inference.conftest import InferenceApi
from tests.inference.test_batches_compat import FRIENDLY, INSULT, SPAM, Pump

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console-batches"


@pytest.fixture
def moderator(api: InferenceApi, artifact_key: str) -> dict[str, Any]:
    trained = api.train(artifact_key, model_name="toxicity")
    return api.deploy({"model": trained["model_id"], "name": "moderator"})


def browser(tenant: Tenant, role: str | None = None) -> Client:
    client = Client()
    client.force_login(tenant.add_member(role)[0] if role else tenant.owner)
    return client


def upload(client: Client, tenant: Tenant, name: str, content: bytes, deployment: str = "moderator") -> Any:
    file = io.BytesIO(content)
    file.name = name
    return client.post(f"/console/{tenant.slug}/batches", {"file": file, "deployment": deployment})


def test_a_csv_is_classified_in_the_background_and_its_results_download(
    api: InferenceApi, moderator: dict[str, Any]
) -> None:
    pump = Pump()
    client = browser(api.tenant)
    page = client.get(f"/console/{api.tenant.slug}/batches").content.decode()
    assert "Batch classify" in page and 'value="moderator"' in page
    assert f'href="/console/{api.tenant.slug}/batches"' in page  # in the navigation

    rows = [("a1", INSULT), ("a2", FRIENDLY), ("a3", SPAM)]
    content = "id,text,note\n" + "".join(f'{i},"{t}",x\n' for i, t in rows)
    created = upload(client, api.tenant, "comments.csv", content.encode())
    assert created.status_code == 302
    batch = Batch.objects.unscoped().get(api=Batch.CONSOLE)
    assert created["Location"] == f"/console/{api.tenant.slug}/batches/{batch.pk}"
    queued = client.get(created["Location"] + "?part=progress").content.decode()
    assert "queued" in queued and 'hx-trigger="every 1s"' in queued and "0 of 3 rows" in queued

    pump()
    done = client.get(created["Location"]).content.decode()
    assert "completed" in done and "3 of 3 rows classified" in done and "hx-trigger" not in done
    assert "Download CSV" in done and "toxicity: toxic" in done

    table = list(
        csv.DictReader(io.StringIO(client.get(created["Location"] + "?download=csv").content.decode()))
    )
    assert [(r["id"], r["text"]) for r in table] == rows
    assert table[0]["toxicity"] == "toxic" and table[1]["toxicity"] == "safe"
    assert float(table[0]["toxicity:toxic"]) > 0.5 and table[0]["error"] == ""
    download = client.get(created["Location"] + "?download=jsonl")
    assert download["Content-Disposition"] == 'attachment; filename="comments-results.jsonl"'
    lines = [json.loads(text) for text in download.content.decode().splitlines()]
    assert lines[2]["id"] == "a3" and lines[2]["results"]["topic"]["label"] == "spam"
    # The batch is an inline one of its own kind: the compatibility APIs do not list it.
    assert api.client.get("/v1/batches").json()["data"] == []


def test_a_jsonl_runs_and_is_cancelled_midway_keeping_its_results(
    api: InferenceApi, moderator: dict[str, Any], override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_INFERENCE_MAX_INPUTS=1)
    pump = Pump()
    client = browser(api.tenant)
    content = "".join(json.dumps({"text": t}) + "\n" for t in [INSULT, FRIENDLY, SPAM, INSULT])
    created = upload(client, api.tenant, "posts.jsonl", content.encode())
    batch = Batch.objects.unscoped().get(api=Batch.CONSOLE)
    with org_scope(batch.org_id):
        batch_process(batch_id=batch.pk, max_chunks=2)
    running = client.get(created["Location"]).content.decode()
    assert "running" in running and "2 of 4 rows classified" in running and 'aria-valuenow="50"' in running
    client.post(f"/console/{api.tenant.slug}/batches/{batch.pk}/cancel")
    pump()
    cancelled = client.get(created["Location"]).content.decode()
    assert "cancelled" in cancelled and "Download CSV" in cancelled
    table = list(
        csv.DictReader(io.StringIO(client.get(created["Location"] + "?download=csv").content.decode()))
    )
    assert [r["id"] for r in table] == ["1", "2"]


def test_bad_files_and_choices_are_named(api: InferenceApi, moderator: dict[str, Any]) -> None:
    client = browser(api.tenant)
    broken = upload(client, api.tenant, "posts.jsonl", b'{"text": "fine"}\n{"oops": 1}\n')
    assert broken.status_code == 400 and "line 2 has no text field" in broken.content.decode()
    nobody = upload(client, api.tenant, "posts.csv", b"text\nhello\n", deployment="no-such")
    assert nobody.status_code == 400 and "Choose a live deployment" in nobody.content.decode()
    assert not Batch.objects.unscoped().exists()
    viewer = browser(api.tenant, "viewer")
    assert upload(viewer, api.tenant, "posts.csv", b"text\nhello\n").status_code == 403


@pytest.mark.cross_tenant("console-batches", "console-batch", "console-batch-cancel")
def test_batch_pages_of_another_org_are_404(
    api: InferenceApi, moderator: dict[str, Any], victim: Tenant
) -> None:
    upload(browser(api.tenant), api.tenant, "posts.csv", b"text\nhello\n")
    batch = Batch.objects.unscoped().get(api=Batch.CONSOLE)
    attacker = browser(victim)
    assert_not_found(attacker.get(f"/console/{api.tenant.slug}/batches"))
    assert_not_found(attacker.get(f"/console/{victim.slug}/batches/{batch.pk}"))
    assert_not_found(attacker.post(f"/console/{victim.slug}/batches/{batch.pk}/cancel"))
    assert "posts.csv" not in attacker.get(f"/console/{victim.slug}/batches").content.decode()


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not installed (/usr/bin/chromium); `make browser` installs it"
)
def test_the_batch_pages_in_chromium(api: InferenceApi, moderator: dict[str, Any], live_server: Any) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    pump = Pump()
    client = browser(api.tenant)
    content = "id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate([INSULT, FRIENDLY, SPAM] * 3))
    created = upload(client, api.tenant, "comments.csv", content.encode())
    pump()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.add_cookies(
            [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
        )
        page = context.new_page()
        page.goto(f"{live_server.url}/console/{api.tenant.slug}/batches")
        assert page.get_by_role("heading", name="Batch classify").is_visible()
        assert page.get_by_role("link", name="Batches").first.is_visible()
        page.screenshot(path=str(SHOTS / "batches.png"), full_page=True)
        page.goto(f"{live_server.url}{created['Location']}")
        assert page.get_by_role("link", name="Download CSV").is_visible()
        assert page.get_by_role("progressbar").get_attribute("aria-valuenow") == "100"
        page.screenshot(path=str(SHOTS / "batch.png"), full_page=True)
        chromium.close()
