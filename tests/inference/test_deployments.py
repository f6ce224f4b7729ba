from __future__ import annotations

from datetime import timedelta

import pytest

from arbiter.config.management.commands.serve import WEB_SERVER_VARIABLE
from arbiter.events import Event
from arbiter.storage import get_blob_store
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.inference.logic import deployments_waiting_expire, deployments_waiting_resume
from services.inference.models import Deployment, ModelVersion
from services.inference.serving.cache import model_cache
from services.inference.serving.preload import live_deployments_preload, preload_wanted
from tests.inference.conftest import InferenceApi, deliver, published

pytestmark = pytest.mark.django_db(databases="__all__")


def test_a_trained_version_deploys_goes_live_and_classifies(api: InferenceApi, artifact_key: str) -> None:
    trained = api.train(artifact_key, model_name="Toxicity")
    with org_scope(api.tenant.org.pk):
        version = ModelVersion.objects.get(model_id=trained["model_id"])
    # The read model learnt the heads and thresholds from the artifact's config.
    assert [head["name"] for head in version.heads] == ["toxicity", "topic"]
    assert version.heads[0]["negative_labels"] == ["safe"]
    assert set(version.thresholds) == {"toxicity", "topic"}
    assert version.metrics["onnx"]["selected"] in ("int8", "fp32")

    deployment = api.deploy({"model": trained["model_id"], "version": 1})
    assert deployment["status"] == "live", deployment
    assert deployment["name"] == "toxicity-v1"
    assert deployment["runtime"] == f"onnx-{version.metrics['onnx']['selected']}"
    (live,) = published("deployment.live", deployment_id=deployment["id"])
    assert live.data["runtime"] == deployment["runtime"]

    response = api.classify(deployment["id"], ["you are an idiot", "have a nice day", "buy cheap pills now"])
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "toxicity-v1" and body["id"].startswith("clf-")
    insult, friendly, spam = body["results"]
    assert insult["toxicity"]["label"] == "toxic" and insult["toxicity"]["flagged"] is True
    assert set(insult["toxicity"]["label_scores"]) == {"safe", "toxic"}
    assert insult["toxicity"]["score"] == insult["toxicity"]["label_scores"]["toxic"] > 0.5
    assert friendly["toxicity"]["label"] == "safe" and friendly["toxicity"]["flagged"] is False
    assert spam["topic"]["labels"] == ["spam"] and spam["topic"]["flagged"] is True
    assert friendly["topic"]["labels"] == ["none"] and friendly["topic"]["flagged"] is False

    (usage,) = published("usage.recorded", deployment_id=deployment["id"])
    assert usage.data["units"] == 3 and usage.data["meter"] == "classification"
    assert usage.data["endpoint"] == "classify" and usage.data["api_key_id"] is not None


def test_a_model_deploys_by_name_and_several_deployments_of_it_stay_live(
    api: InferenceApi, artifact_key: str
) -> None:
    trained = api.train(artifact_key, model_name="comments")
    first = api.deploy({"model": "comments"})
    second = api.deploy(
        {
            "model": trained["model_id"],
            "version": 1,
            "name": "comments-strict",
            "thresholds": {"toxicity": {"toxic": 0.999}},
        }
    )
    assert (first["name"], second["name"]) == ("comments-v1", "comments-strict")
    listed = api.client.get(api.url("/deployments"), {"status": "live"}).json()
    assert {item["id"] for item in listed["results"]} == {first["id"], second["id"]}

    # Thresholds from the version by default; the strict deployment's own threshold keeps it from flagging.
    lenient = api.classify(first["id"], ["you are an idiot"]).json()["results"][0]["toxicity"]
    strict = api.classify(second["id"], ["you are an idiot"]).json()["results"][0]["toxicity"]
    assert lenient["flagged"] is True and strict["flagged"] is False
    assert lenient["label_scores"] == strict["label_scores"]

    taken = api.client.post(
        api.url("/deployments"), {"model": "comments", "name": "comments-strict"}, format="json"
    )
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "name_taken"


def test_bad_deployment_requests_are_refused_with_reasons(api: InferenceApi, artifact_key: str) -> None:
    trained = api.train(artifact_key)
    cases = [
        ({"model": 999_999}, 404, "not_found"),
        ({"model": "no-such-model", "version": 7}, 404, "not_found"),
        ({"model": trained["model_id"], "thresholds": {"nope": {"x": 0.5}}}, 400, "invalid"),
        ({"model": trained["model_id"], "thresholds": {"toxicity": {"toxic": 1.5}}}, 400, "invalid"),
        ({"model": trained["model_id"], "name": "12345"}, 400, "invalid"),
        ({"model": trained["model_id"], "log_retention_days": 10_000}, 400, "invalid"),
    ]
    for body, status, code in cases:
        response = api.client.post(api.url("/deployments"), body, format="json")
        assert response.status_code == status, (body, response.content)
        assert response.json()["error"]["code"] == code
    assert not published("deployment.requested")


def test_a_retried_create_with_the_same_idempotency_key_creates_one_deployment(
    api: InferenceApi, artifact_key: str
) -> None:
    trained = api.train(artifact_key)
    bodies = [
        api.client.post(
            api.url("/deployments"),
            {"model": trained["model_id"]},
            format="json",
            HTTP_IDEMPOTENCY_KEY="deploy-once",
        ).json()
        for _ in range(2)
    ]
    assert bodies[0]["id"] == bodies[1]["id"]
    assert len(published("deployment.requested", deployment_id=bodies[0]["id"])) == 1


def test_stopping_a_deployment_announces_it_and_classify_then_answers_409(
    api: InferenceApi, artifact_key: str
) -> None:
    trained = api.train(artifact_key)
    deployment = api.deploy({"model": trained["model_id"]})
    stopped = api.client.delete(api.url(f"/deployments/{deployment['id']}"))
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert published("deployment.stopped", deployment_id=deployment["id"])
    response = api.classify(deployment["id"], ["hello"])
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "deployment_not_live"
    assert "stopped" in response.json()["error"]["message"]
    # Stopping again changes nothing and announces nothing new.
    assert api.client.delete(api.url(f"/deployments/{deployment['id']}")).json()["status"] == "stopped"
    assert len(published("deployment.stopped", deployment_id=deployment["id"])) == 1
    # A deployment stopped before it was loaded is never loaded.
    pending = api.deploy({"model": trained["model_id"]}, load=False)
    api.client.delete(api.url(f"/deployments/{pending['id']}"))
    (requested,) = published("deployment.requested", deployment_id=pending["id"])
    deliver(requested)
    assert api.client.get(api.url(f"/deployments/{pending['id']}")).json()["status"] == "stopped"
    assert not published("deployment.live", deployment_id=pending["id"])


def test_a_deployment_whose_artifact_cannot_load_fails_and_says_why(
    api: InferenceApi, artifact_key: str
) -> None:
    missing = api.train("artifacts/tests/never-written.tar.gz", model_name="ghost")
    deployment = api.deploy({"model": missing["model_id"]})
    assert deployment["status"] == "failed"
    assert deployment["reason"] == "artifact_missing"
    assert "never-written" in deployment["message"]
    (failed,) = published("deployment.failed", deployment_id=deployment["id"])
    assert failed.data["reason"] == "artifact_missing"

    get_blob_store().put_bytes("artifacts/tests/not-a-model.tar.gz", b"this is not a tar file")
    broken = api.train("artifacts/tests/not-a-model.tar.gz", model_name="broken")
    deployment = api.deploy({"model": broken["model_id"]})
    assert deployment["status"] == "failed" and deployment["reason"] == "invalid_artifact"
    assert api.classify(deployment["id"], ["hello"]).status_code == 409


def test_a_restarted_process_serves_live_deployments_again(
    api: InferenceApi, artifact_key: str, fresh_models: None
) -> None:
    trained = api.train(artifact_key)
    deployment = api.deploy({"model": trained["model_id"]})
    model_cache().clear()  # what a restart leaves: the database says live, the process holds nothing
    assert live_deployments_preload() == [artifact_key]
    assert model_cache().keys() == [artifact_key]
    model_cache().clear()
    # Without preloading, the first request loads the model.
    response = api.classify(deployment["id"], ["you are an idiot"])
    assert response.status_code == 200
    assert response.json()["results"][0]["toxicity"]["label"] == "toxic"


def test_only_a_process_started_by_arbiter_serve_preloads_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEB_SERVER_VARIABLE, raising=False)
    assert not preload_wanted()  # a relay, a consumer, a management command: no models to warm
    monkeypatch.setenv(WEB_SERVER_VARIABLE, "granian")  # what `arbiter serve` gives its web server
    assert preload_wanted()


@pytest.mark.cross_tenant(
    "deployment-list",
    "deployment-detail",
    "deployment-classify",
    "deployment-request-log",
    "deployment-request-log-export",
)
def test_another_orgs_deployments_are_404(api: InferenceApi, victim: Tenant, artifact_key: str) -> None:
    trained = api.train(artifact_key)
    deployment = api.deploy({"model": trained["model_id"], "log_requests": True})
    assert api.classify(deployment["id"], ["hello there"]).status_code == 200
    paths = [f"/deployments/{deployment['id']}", f"/deployments/{deployment['id']}/request-log"]

    # The victim's own key, on the tenant's org or on the tenant's deployment under its own org.
    thief = victim.client(["admin"])
    for path in ["/deployments", *paths]:
        assert_not_found(thief.get(api.url(path)))
        if path != "/deployments":
            assert_not_found(thief.get(victim.url(path)))
    for url in (
        api.url(f"/deployments/{deployment['id']}/classify"),
        victim.url(f"/deployments/{deployment['id']}/classify"),
    ):
        assert_not_found(thief.post(url, {"inputs": ["x"]}, format="json"))
    for url in (
        api.url(f"/deployments/{deployment['id']}/request-log/export"),
        victim.url(f"/deployments/{deployment['id']}/request-log/export"),
    ):
        assert_not_found(thief.post(url, {}, format="json"))
    assert_not_found(thief.delete(victim.url(f"/deployments/{deployment['id']}")))
    assert_not_found(thief.post(api.url("/deployments"), {"model": trained["model_id"]}, format="json"))
    # The victim cannot deploy the tenant's model either: it is not one of its versions.
    response = thief.post(victim.url("/deployments"), {"model": trained["model_id"]}, format="json")
    assert response.status_code == 404
    assert victim.client().get(victim.url("/deployments")).json()["count"] == 0
    assert Deployment.objects.unscoped().get(pk=deployment["id"]).status == "live"


def test_a_deployment_of_a_version_still_on_its_way_waits_for_it_then_loads(
    api: InferenceApi, artifact_key: str
) -> None:
    """A script that deploys the moment training succeeds is not told the version is unknown: it waits."""
    response = api.client.post(api.url("/deployments"), {"model": 4242, "version": 1}, format="json")
    assert response.status_code == 202, response.content
    waiting = response.json()
    assert (waiting["status"], waiting["reason"]) == ("pending", "waiting_for_version")
    assert "version 1 of model 4242" in waiting["message"]
    assert not published("deployment.requested")

    api.train(artifact_key, model_id=4242)  # training.completed reaches the inference service

    (requested,) = published("deployment.requested", deployment_id=waiting["id"])
    assert requested.data["artifact"] == artifact_key
    deliver(requested)
    live = api.client.get(api.url(f"/deployments/{waiting['id']}")).json()
    assert (live["status"], live["reason"]) == ("live", "")
    assert api.classify(waiting["id"], ["you are an idiot"]).status_code == 200


def test_a_waiting_deployment_fails_when_its_version_fails_or_never_comes(api: InferenceApi) -> None:
    failing = api.client.post(api.url("/deployments"), {"model": 51, "version": 2}, format="json").json()
    never = api.client.post(api.url("/deployments"), {"model": 52, "version": 1}, format="json").json()
    deliver(
        Event(
            type="training.failed",
            source="/arbiter/training",
            org_id=api.tenant.org.pk,
            subject="models/51/versions/2",
            data={
                "run_id": 9,
                "model_id": 51,
                "version": 2,
                "state": "failed",
                "reason": "SingleClassHead",
                "message": "Head 'toxicity' has a single class.",
            },
        )
    )
    failed = api.client.get(api.url(f"/deployments/{failing['id']}")).json()
    assert (failed["status"], failed["reason"]) == ("failed", "version_not_trained")
    assert "single class" in failed["message"]

    assert deployments_waiting_expire(older_than=timedelta(minutes=10)) == 0
    assert deployments_waiting_expire(older_than=timedelta(0)) == 1
    expired = api.client.get(api.url(f"/deployments/{never['id']}")).json()
    assert (expired["status"], expired["reason"]) == ("failed", "version_not_found")
    assert not published("deployment.requested")


def test_a_deployment_created_while_its_version_arrived_is_loaded_by_the_purge_loop(
    api: InferenceApi, artifact_key: str
) -> None:
    """The deployment's request and `training.completed` committed at once, each blind to the other: the
    version is here, the deployment still waits. The purge loop's re-check loads it."""
    waiting = api.client.post(api.url("/deployments"), {"model": 4343, "version": 1}, format="json").json()
    ModelVersion.objects.unscoped().create(
        org_id=api.tenant.org.pk,
        model_id=4343,
        version=1,
        model_name="toxicity",
        artifact=artifact_key,
        heads=[],
    )
    assert not published("deployment.requested")
    assert deployments_waiting_resume() == 1  # what the purge loop runs every pass
    (requested,) = published("deployment.requested", deployment_id=waiting["id"])
    assert requested.data["artifact"] == artifact_key
    deliver(requested)
    live = api.client.get(api.url(f"/deployments/{waiting['id']}")).json()
    assert (live["status"], live["reason"]) == ("live", "")
    assert deployments_waiting_resume() == 0
