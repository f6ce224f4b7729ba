"""The playground's free allowance, usage per org and day, and the opt-in request log (export, purge)."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from arbiter.testing.tenants import Tenant, assert_not_found
from services.inference.logic import request_log_purge
from services.inference.models import RequestLogEntry
from tests.inference.conftest import InferenceApi, published

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def small_allowance(override_arbiter_settings: Any) -> int:
    override_arbiter_settings(ARBITER_PLAYGROUND_FREE_QUERIES=3)
    return 3


def streamed(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


@pytest.mark.cross_tenant("model-version-playground")
def test_the_playground_answers_before_deploying_until_the_free_queries_are_used(
    api: InferenceApi, artifact_key: str, small_allowance: int, victim: Tenant
) -> None:
    trained = api.train(artifact_key, model_name="Toxicity")
    url = api.url(f"/models/{trained['model_id']}/versions/1/playground")
    member = api.tenant.client(["inference"])
    first = member.post(url, {"input": "you are an idiot"}, format="json")
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["model"] == "Toxicity" and body["version"] == 1
    assert body["results"][0]["toxicity"]["label"] == "toxic"
    assert body["quota"] == {"used": 1, "free": 3, "remaining": 2}
    assert (
        member.post(url, {"input": ["have a nice day", "buy cheap pills now"]}, format="json").status_code
        == 200
    )

    refused = member.post(url, {"input": "one more"}, format="json")
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "3 free playground queries" in refused.json()["error"]["message"]
    assert [event.data["units"] for event in published("usage.recorded", meter="playground")] == [1, 2]

    assert (
        member.post(
            api.url(f"/models/{trained['model_id']}/versions/9/playground"), {"input": "x"}, format="json"
        ).status_code
        == 404
    )
    assert api.tenant.client(["models:read"]).post(url, {"input": "x"}, format="json").status_code == 403
    # Another org can neither use this org's model nor reach it under its own name.
    thief = victim.client(["inference"])
    assert_not_found(thief.post(url, {"input": "x"}, format="json"))
    assert_not_found(
        thief.post(
            victim.url(f"/models/{trained['model_id']}/versions/1/playground"), {"input": "x"}, format="json"
        )
    )


@pytest.mark.cross_tenant("inference-usage")
def test_usage_shows_up_per_org_day_and_deployment(
    api: InferenceApi, artifact_key: str, victim: Tenant
) -> None:
    trained = api.train(artifact_key)
    deployment = api.deploy({"model": trained["model_id"]})
    for inputs in (["a friendly hello"], ["one", "two", "three"]):
        assert api.classify(deployment["id"], inputs).status_code == 200
    assert (
        api.client.post(
            api.url(f"/models/{trained['model_id']}/versions/1/playground"), {"input": "hi"}, format="json"
        ).status_code
        == 200
    )

    response = api.tenant.client(["billing:read"]).get(api.url("/usage"))
    assert response.status_code == 200
    usage = response.json()
    today = timezone.now().date().isoformat()
    assert usage["to"] == today
    by_meter = {row["meter"]: row for row in usage["days"]}
    assert by_meter["classification"] == {
        "day": today,
        "meter": "classification",
        "deployment_id": deployment["id"],
        "deployment": deployment["name"],
        "model_id": trained["model_id"],
        "version": 1,
        "requests": 2,
        "units": 4,
    }
    assert by_meter["playground"]["deployment_id"] is None and by_meter["playground"]["units"] == 1
    assert usage["totals"] == {
        "classification": {"requests": 2, "units": 4},
        "playground": {"requests": 1, "units": 1},
    }

    yesterday = (timezone.now() - timedelta(days=1)).date().isoformat()
    assert api.client.get(api.url("/usage"), {"from": yesterday, "to": yesterday}).json()["days"] == []
    assert api.client.get(api.url("/usage"), {"from": "soon"}).status_code == 400
    assert api.tenant.client(["inference"]).get(api.url("/usage")).status_code == 403
    assert_not_found(victim.client(["billing:read"]).get(api.url("/usage")))
    assert victim.client(["billing:read"]).get(victim.url("/usage")).json()["days"] == []


def test_logged_requests_export_as_a_dataset_and_expire(api: InferenceApi, artifact_key: str) -> None:
    trained = api.train(artifact_key)
    logging = api.deploy({"model": trained["model_id"], "log_requests": True, "log_retention_days": 7})
    quiet = api.deploy({"model": trained["model_id"]})
    texts = ["you are an idiot", "buy cheap pills now", 'she said "hi", then left']
    assert api.classify(logging["id"], texts).status_code == 200
    assert api.classify(quiet["id"], ["not logged"]).status_code == 200

    listed = api.client.get(api.url(f"/deployments/{logging['id']}/request-log")).json()
    assert [entry["text"] for entry in listed["results"]] == texts
    assert listed["results"][0]["prediction"]["toxicity"] == {"labels": ["toxic"], "flagged": True}
    assert api.client.get(api.url(f"/deployments/{quiet['id']}/request-log")).json()["count"] == 0

    export = api.client.post(api.url(f"/deployments/{logging['id']}/request-log/export"), {}, format="json")
    assert export.status_code == 200
    assert export["Content-Disposition"] == f'attachment; filename="{logging["name"]}-requests.jsonl"'
    rows = [json.loads(line) for line in streamed(export).splitlines()]
    assert rows[0] == {"text": "you are an idiot", "labels": {"toxicity": ["toxic"], "topic": ["insult"]}}
    assert rows[1]["labels"]["topic"] == ["spam"] and rows[2]["text"] == texts[2]

    # The loop back to training: the export uploads as a dataset with the deployment's heads as labels.
    upload = io.BytesIO(
        streamed(
            api.client.post(api.url(f"/deployments/{logging['id']}/request-log/export"), {}, format="json")
        ).encode()
    )
    upload.name = "requests.jsonl"
    dataset = api.client.post(api.url("/datasets"), {"file": upload}, format="multipart")
    assert dataset.status_code == 201, dataset.content
    assert dataset.json()["mapping"]["input_column"] == "text"
    assert {head["name"] for head in dataset.json()["heads"]} == {"toxicity", "topic"}
    assert dataset.json()["rows"] == 3

    as_csv = api.client.post(
        api.url(f"/deployments/{logging['id']}/request-log/export"), {"format": "csv"}, format="json"
    )
    table = list(csv.reader(io.StringIO(streamed(as_csv))))
    assert table[0] == ["text", "toxicity", "topic"]
    assert table[1] == ["you are an idiot", "toxic", "insult"] and table[3][0] == texts[2]
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    assert (
        streamed(
            api.client.post(
                api.url(f"/deployments/{logging['id']}/request-log/export"), {"from": later}, format="json"
            )
        )
        == ""
    )
    assert (
        api.client.post(
            api.url(f"/deployments/{logging['id']}/request-log/export"), {"format": "xml"}, format="json"
        ).status_code
        == 400
    )
    assert (
        api.tenant.client(["inference"])
        .post(api.url(f"/deployments/{logging['id']}/request-log/export"), {}, format="json")
        .status_code
        == 403
    )

    # Retention: a week later the entries are gone; the purge runs as a command too.
    assert request_log_purge(now=timezone.now() + timedelta(days=6)) == 0
    assert request_log_purge(now=timezone.now() + timedelta(days=8)) == 3
    assert RequestLogEntry.objects.unscoped().filter(deployment_id=logging["id"]).count() == 0
    out = io.StringIO()
    call_command("inference_purge_request_logs", stdout=out)
    assert "Deleted 0 logged requests" in out.getvalue()
