"""Which deployment answers a compatibility request: `model` names a deployment or a model."""

from __future__ import annotations

from typing import Any

import pytest

from tests.inference.conftest import InferenceApi

pytestmark = pytest.mark.django_db(databases="__all__")


def moderate(api: InferenceApi, key_client: Any, model: Any = None, **body: Any) -> Any:
    payload = {"input": "you are an idiot", **body}
    if model is not None:
        payload["model"] = model
    return key_client.post("/v1/moderations", payload, format="json")


def test_model_names_a_deployment_or_the_newest_live_deployment_of_a_model(
    api: InferenceApi, artifact_key: str
) -> None:
    trained = api.train(artifact_key, model_name="comments")
    api.train(artifact_key, model_name="comments", model_id=trained["model_id"], version=2)
    older = api.deploy({"model": "comments", "version": 2})
    newer = api.deploy({"model": "comments", "version": 1, "name": "rollback"})
    caller = api.tenant.client(["inference"])

    answered = {
        "comments": newer,
        str(trained["model_id"]): newer,
        str(older["id"]): older,
        older["name"]: older,
        None: newer,
    }
    for model, deployment in answered.items():
        response = moderate(api, caller, model)
        assert response.status_code == 200, (model, response.content)
        assert response.json()["model"] == deployment["name"]

    api.client.delete(api.url(f"/deployments/{newer['id']}"))
    assert moderate(api, caller, "comments").json()["model"] == older["name"]
    stopped = moderate(api, caller, str(newer["id"]))
    assert stopped.status_code == 409 and stopped.json()["error"]["code"] == "deployment_not_live"

    pending = api.deploy({"model": "comments", "name": "warming-up"}, load=False)
    loading = moderate(api, caller, "warming-up")
    assert loading.status_code == 409 and "still loading" in loading.json()["error"]["message"]
    assert pending["status"] == "pending"

    unknown = moderate(api, caller, "omni-moderation-latest")
    assert unknown.status_code == 404 and "omni-moderation-latest" in unknown.json()["error"]["message"]
    assert caller.post("/v1/moderations", {"model": "comments"}, format="json").status_code == 400
    assert (
        caller.post("/v1/classifications", {"model": "comments", "input": []}, format="json").status_code
        == 400
    )


def test_the_compatibility_endpoints_take_only_api_keys_with_the_inference_scope(
    api: InferenceApi, artifact_key: str
) -> None:
    trained = api.train(artifact_key)
    api.deploy({"model": trained["model_id"]})
    assert moderate(api, api.tenant.client(["inference"])).status_code == 200
    denied = moderate(api, api.tenant.client(["datasets:read", "models:read"]))
    assert denied.status_code == 403 and "'inference'" in denied.json()["error"]["message"]
    # A signed-in person has no org here: the org comes from the key.
    assert moderate(api, api.tenant.session_client()).status_code == 401
