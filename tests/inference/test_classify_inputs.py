"""Bad requests to the classify endpoint get clear errors, and the server keeps serving after each."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from arbiter.testing.tenants import Tenant
from services.inference.conf import inference_settings
from tests.inference.conftest import InferenceApi, published

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def deployment(api: InferenceApi, artifact_key: str) -> dict[str, Any]:
    trained = api.train(artifact_key)
    return api.deploy({"model": trained["model_id"]})


def error(response: Any) -> dict[str, Any]:
    return dict(response.json()["error"])


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(
    api: InferenceApi, deployment: dict[str, Any]
) -> None:
    url = api.url(f"/deployments/{deployment['id']}/classify")
    limits = inference_settings()

    empty = api.classify(deployment["id"], [])
    assert empty.status_code == 400 and "at least one" in error(empty)["message"]
    blank = api.classify(deployment["id"], ["fine", "   "])
    assert blank.status_code == 400 and error(blank)["message"].startswith("inputs[1]")
    not_text = api.classify(deployment["id"], ["fine", {"text": "x"}])
    assert not_text.status_code == 400 and error(not_text)["details"]["index"] == 1
    missing = api.client.post(url, {"texts": ["x"]}, format="json")
    assert missing.status_code == 400 and error(missing)["message"].startswith("inputs:")

    huge = api.classify(deployment["id"], ["fine", "x" * 10_000_000])
    assert huge.status_code == 400
    assert error(huge)["code"] == "input_too_long" and error(huge)["details"]["index"] == 1
    assert "inputs[1]" in error(huge)["message"] and f"{limits.max_input_chars:,}" in error(huge)["message"]

    body = json.dumps({"inputs": ["y" * 40_000_000]})
    oversized = api.client.generic("POST", url, body, content_type="application/json")
    assert oversized.status_code == 413 and error(oversized)["code"] == "payload_too_large"

    many = api.classify(deployment["id"], ["spam"] * 100_000)
    assert many.status_code == 413
    assert (
        error(many)["code"] == "too_many_inputs" and error(many)["details"]["max_inputs"] == limits.max_inputs
    )

    invalid_utf8 = api.client.generic(
        "POST", url, b'{"inputs": ["\xff\xfe bad"]}', content_type="application/json"
    )
    assert invalid_utf8.status_code == 400 and error(invalid_utf8)["code"] == "malformed_request"
    not_json = api.client.generic("POST", url, b"inputs=hello", content_type="text/plain")
    assert not_json.status_code == 415
    not_object = api.client.generic("POST", url, json.dumps(["x"]), content_type="application/json")
    assert not_object.status_code == 400

    # Nothing above was classified or billed; a good request still is.
    assert not published("usage.recorded", deployment_id=deployment["id"])
    good = api.classify(deployment["id"], "you are an idiot")
    assert good.status_code == 200 and len(good.json()["results"]) == 1
    assert published("usage.recorded", deployment_id=deployment["id"])[0].data["units"] == 1


def test_unknown_and_other_orgs_deployments_are_404(
    api: InferenceApi, deployment: dict[str, Any], victim: Tenant
) -> None:
    assert api.classify(999_999, ["hello"]).status_code == 404
    thief = InferenceApi(victim, victim.client(["inference"]))
    assert thief.classify(deployment["id"], ["hello"]).status_code == 404
    response = thief.client.post(
        api.url(f"/deployments/{deployment['id']}/classify"), {"inputs": ["hello"]}, format="json"
    )
    assert response.status_code == 404 and error(response)["code"] == "not_found"


def test_classify_needs_the_inference_scope(api: InferenceApi, deployment: dict[str, Any]) -> None:
    reader = InferenceApi(api.tenant, api.tenant.client(["models:read"]))
    denied = reader.classify(deployment["id"], ["hello"])
    assert denied.status_code == 403 and "'inference'" in error(denied)["message"]
    # ... which is all it needs: a key with only `inference` classifies but cannot deploy.
    caller = InferenceApi(api.tenant, api.tenant.client(["inference"]))
    assert caller.classify(deployment["id"], ["hello"]).status_code == 200
    assert caller.client.post(api.url("/deployments"), {"model": 1}, format="json").status_code == 403
    assert (
        APIClient()
        .post(api.url(f"/deployments/{deployment['id']}/classify"), {"inputs": ["x"]}, format="json")
        .status_code
        == 401
    )
