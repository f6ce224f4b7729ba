"""Fixtures for the annotation service: a fake LLM on loopback, and rows arriving the real way.

Datasets are created through the dataset API; the `dataset.rows_changed` events the dataset service wrote to its
outbox are handed to the annotation service's handler (checked against their schema), and the annotation
service's `labels.accepted` events to the dataset service's, as the consumer runners would.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from arbiter.events.envelope import Event
from arbiter.events.handlers import handlers_for
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import get_event_type
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant
from tests.annotation import fake_llm

TOXIC = ["you are an idiot", "shut up you moron", "i hate you, loser", "you stupid fool", "get lost, jerk"]
SAFE = [
    "have a nice day",
    "thanks for the help",
    "the weather is lovely",
    "see you tomorrow",
    "great article",
]
LABELS = [
    {"name": "toxic", "code": 1, "description": "insults, name-calling or hostility towards a person"},
    {"name": "safe", "code": 0, "description": "friendly, polite or neutral everyday conversation"},
]


def deliver(*, producer: str, consumer: str, type: str) -> int:
    """Hand `producer`'s unsent events of `type` to `consumer`'s handler, oldest first; returns how many."""
    rows = list(OutboxEvent.objects.using(producer).filter(type=type, sent_at__isnull=True).order_by("id"))
    handler = handlers_for(consumer)[type]
    for row in rows:
        event = Event.from_dict(row.body)
        get_event_type(type).validate(event.data)
        with transaction.atomic(using=consumer), org_scope(event.org_id):
            handler(event)
        row.sent_at = timezone.now()
        row.save(using=producer, update_fields=["sent_at"])
    return len(rows)


def rows_to_annotation() -> int:
    return deliver(producer="dataset", consumer="annotation", type="dataset.rows_changed")


def labels_to_dataset() -> int:
    sent = deliver(producer="annotation", consumer="dataset", type="labels.accepted")
    rows_to_annotation()  # the dataset's echo of the relabelled rows
    return sent


def comments_csv(count: int = 20, *, labeled: int = 0) -> bytes:
    """Comments, toxic and friendly by turns; the first `labeled` rows carry a human `toxicity` label."""
    lines = ["comment,toxicity"]
    for i in range(count):
        toxic = i % 2 == 0
        text = f"{(TOXIC if toxic else SAFE)[(i // 2) % 5]} ({i})"
        label = ("toxic" if toxic else "safe") if i < labeled else ""
        lines.append(f'"{text}",{label}')
    return ("\n".join(lines) + "\n").encode()


class AnnotationApi:
    def __init__(self, tenant: Tenant, scopes: list[str] | None = None) -> None:
        self.tenant = tenant
        self.client = tenant.client(scopes or ["datasets:read", "datasets:write"])

    def url(self, path: str) -> str:
        return self.tenant.url(path)

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(self.url(path), params)

    def post(self, path: str, body: Any) -> Any:
        return self.client.post(self.url(path), body, format="json")

    def dataset(self, data: bytes, name: str = "comments.csv") -> dict[str, Any]:
        file = io.BytesIO(data)
        file.name = name
        response = self.client.post(self.url("/datasets"), {"file": file}, format="multipart")
        assert response.status_code == 201, response.content
        rows_to_annotation()
        return dict(response.json())

    def schema(
        self, dataset_id: int, head: str = "toxicity", labels: list[dict[str, Any]] | None = None
    ) -> Any:
        response = self.post(
            "/label-schemas", {"dataset": dataset_id, "head": head, "labels": labels or LABELS}
        )
        assert response.status_code == 201, response.content
        return response.json()

    def job(self, dataset_id: int, head: str = "toxicity", **body: Any) -> Any:
        response = self.post("/annotation-jobs", {"dataset": dataset_id, "head": head, **body})
        assert response.status_code == 201, response.content
        return response.json()

    def dataset_rows(self, dataset_id: int) -> list[dict[str, Any]]:
        response = self.get(f"/datasets/{dataset_id}/rows", page_size=500)
        assert response.status_code == 200, response.content
        return list(response.json()["results"])


@pytest.fixture
def api(tenant: Tenant) -> AnnotationApi:
    return AnnotationApi(tenant)


@pytest.fixture
def fake_llm_server(override_arbiter_settings: Any) -> Iterator[fake_llm.FakeLlm]:
    override_arbiter_settings(
        ARBITER_LLM_ALLOWED_NETWORKS="127.0.0.0/8",
        ARBITER_LLM_TIMEOUT_SECONDS="1",
        ARBITER_LLM_RETRY_MAX_SECONDS="0.2",
    )
    yield from fake_llm.serve()


class Mailbox:
    """What a real SMTP server on loopback (aiosmtpd) received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server(override_arbiter_settings: Any) -> Iterator[Mailbox]:
    """An SMTP server on a free loopback port, and ARBITER_EMAIL_URL pointing at it."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    override_arbiter_settings(ARBITER_EMAIL_URL=f"smtp://127.0.0.1:{port}?timeout=5")
    try:
        yield mailbox
    finally:
        controller.stop()
