"""Through the real event backbone: outbox, relay, the embedded Kafka broker and the consumer runner."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from arbiter.events import publish
from arbiter.events.handlers import handlers_for
from arbiter.events.testing import consumer_running, relay_outbox, wait_for
from services.inference.models import Deployment, ModelVersion
from tests.inference.conftest import InferenceApi, published

pytestmark = [pytest.mark.django_db(databases="__all__", transaction=True), pytest.mark.slow]


def test_a_completed_training_run_is_deployed_and_served_through_kafka(
    kafka_bootstrap: str, api: InferenceApi, artifact_key: str
) -> None:
    org_id = api.tenant.org.pk
    with transaction.atomic(using="training"):
        # What the training service announces when a run succeeds.
        publish(
            type="training.completed",
            org_id=org_id,
            subject="models/41/versions/1",
            data={"run_id": 9, "model_id": 41, "version": 1, "artifact": artifact_key, "metrics_summary": {}},
        )
    with consumer_running(
        consumer="inference",
        alias="inference",
        handlers=handlers_for("inference"),
        bootstrap_servers=kafka_bootstrap,
    ):
        relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
        wait_for(lambda: ModelVersion.objects.unscoped().filter(org_id=org_id, model_id=41).exists())

        created = api.client.post(api.url("/deployments"), {"model": 41}, format="json")
        assert created.status_code == 202
        deployment_id = created.json()["id"]
        relay_outbox(alias="inference", bootstrap_servers=kafka_bootstrap)

        def live() -> Any:
            return Deployment.objects.unscoped().filter(pk=deployment_id, status="live").first()

        deployment = wait_for(live, timeout_s=120)
    assert deployment.runtime.startswith("onnx-")
    assert published("deployment.live", deployment_id=deployment_id)
    response = api.classify(deployment_id, ["you are an idiot"])
    assert response.status_code == 200 and response.json()["results"][0]["toxicity"]["flagged"] is True
    # The usage event leaves through the same outbox and relay.
    assert relay_outbox(alias="inference", bootstrap_servers=kafka_bootstrap) >= 2
