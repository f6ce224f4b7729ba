"""Fixtures for the inference service: a real trained artifact in the blob store, and event delivery.

The artifact is trained once with the ML core (`head` strategy, two heads: `toxicity` multi-class with
labels safe/toxic, `topic` multi-label with insult/spam/none) and kept in pytest's cache, keyed by the ML
core's source and the training rows, so later runs skip the training. Trained versions reach the service
the real way: a `training.completed` event (checked against its schema) handed to the service's handler,
as the consumer runner would.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from arbiter.events.envelope import Event
from arbiter.events.handlers import handlers_for
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import get_event_type
from arbiter.events.testing import kafka_bootstrap, kafka_broker
from arbiter.storage import get_blob_store
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.artifacts import cached_head_artifact
from arbiter.testing.tenants import Tenant

__all__ = ["kafka_bootstrap", "kafka_broker"]

ARTIFACT_KEY = "artifacts/tests/toxicity-topic.tar.gz"

TOXIC = [
    "you are an idiot",
    "I hate you so much",
    "shut up you moron",
    "you are worthless trash",
    "go away loser",
    "what a stupid fool you are",
    "you disgusting pig",
    "nobody likes you, idiot",
    "you are pathetic",
    "drop dead, creep",
]
SAFE = [
    "have a nice day",
    "thanks for your help",
    "the weather is lovely today",
    "I like this song",
    "see you tomorrow",
    "great work on the project",
    "the meeting is at noon",
    "I enjoyed the book",
    "happy birthday to you",
    "let us grab lunch",
]
SPAM = [
    "buy cheap pills now",
    "click here to win money",
    "free prize waiting for you",
    "limited offer, act now",
    "earn cash from home fast",
    "cheap watches on sale today",
    "win a free phone now",
    "lowest loan rates here",
    "get rich quick with crypto",
    "claim your reward today",
]

_ids = itertools.count(1)


def training_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for suffix in ("", "!"):
        for texts, toxicity, topic in (
            (TOXIC, "toxic", ["insult"]),
            (SAFE, "safe", ["none"]),
            (SPAM, "safe", ["spam"]),
        ):
            for text in texts:
                rows.append(
                    {
                        "row": len(rows) + 1,
                        "input": text + suffix,
                        "labels": {"toxicity": [toxicity], "topic": topic},
                        "split": "train",
                    }
                )
    return rows


@pytest.fixture(scope="session")
def artifact_blob(pytestconfig: pytest.Config) -> bytes:
    return cached_head_artifact(
        cache_dir=pytestconfig.cache.mkdir("inference-artifacts"),
        prefix="",
        rows=training_rows(),
        heads=[
            {"name": "toxicity", "labels": ["safe", "toxic"]},
            {"name": "topic", "labels": ["insult", "spam", "none"], "multi_label": True},
        ],
        max_epochs=60,
    )


@pytest.fixture(scope="session")
def artifact_key(artifact_blob: bytes) -> str:
    get_blob_store().put_bytes(ARTIFACT_KEY, artifact_blob)
    return ARTIFACT_KEY


def deliver(event: Event) -> None:
    """Hand an event to the inference service's handler as the consumer runner does."""
    get_event_type(event.type).validate(event.data)
    handler = handlers_for("inference")[event.type]
    with transaction.atomic(using="inference"), org_scope(event.org_id):
        handler(event)


def published(type_name: str, **data: Any) -> list[Event]:
    """Events of a type in the inference outbox whose data has these values, checked against their schema."""
    events = [
        Event.from_json(row.payload)
        for row in OutboxEvent.objects.using("inference").filter(type=type_name).order_by("id")
    ]
    for event in events:
        get_event_type(type_name).validate(event.data)
    return [event for event in events if all(event.data.get(k) == v for k, v in data.items())]


def training_completed(
    *,
    org_id: int,
    artifact: str,
    model_id: int | None = None,
    version: int = 1,
    model_name: str | None = "toxicity",
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run_id": next(_ids),
        "model_id": model_id or 100 + next(_ids),
        "version": version,
        "artifact": artifact,
        "metrics_summary": {"selection_metric": 0.95},
    }
    if model_name:
        data["model_name"] = model_name
    deliver(
        Event(
            type="training.completed",
            source="/arbiter/training",
            org_id=org_id,
            subject=f"models/{data['model_id']}/versions/{version}",
            data=data,
        )
    )
    return data


class InferenceApi:
    """One org's view of the inference API, with the event deliveries a running system would make."""

    def __init__(self, tenant: Tenant, client: APIClient) -> None:
        self.tenant = tenant
        self.client = client

    def url(self, path: str = "") -> str:
        return self.tenant.url(path)

    def train(self, artifact: str, **kwargs: Any) -> dict[str, Any]:
        return training_completed(org_id=self.tenant.org.pk, artifact=artifact, **kwargs)

    def deploy(self, body: dict[str, Any], *, load: bool = True) -> dict[str, Any]:
        response = self.client.post(self.url("/deployments"), body, format="json")
        assert response.status_code == 202, response.content
        deployment = response.json()
        assert deployment["status"] == "pending"
        if load:
            (requested,) = published("deployment.requested", deployment_id=deployment["id"])
            deliver(requested)
            deployment = self.client.get(self.url(f"/deployments/{deployment['id']}")).json()
        return deployment

    def classify(self, deployment_id: int, inputs: Any) -> Any:
        return self.client.post(
            self.url(f"/deployments/{deployment_id}/classify"), {"inputs": inputs}, format="json"
        )


@pytest.fixture
def api(tenant: Tenant) -> InferenceApi:
    return InferenceApi(tenant, tenant.client(["admin"]))


@pytest.fixture
def fresh_models() -> Iterator[None]:
    """An empty model cache before and after the test, as in a process that just started."""
    from services.inference.serving.cache import model_cache

    model_cache().clear()
    yield
    model_cache().clear()
