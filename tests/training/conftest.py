"""Fixtures for the training service: snapshots as the dataset service announces them, and event delivery.

Snapshots reach the training service the real way: a JSONL blob in the blob store and a `snapshot.created`
event (checked against its schema) handed to the service's handler, as the consumer runner would.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from arbiter.events.envelope import Event
from arbiter.events.handlers import handlers_for
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import get_event_type
from arbiter.storage import get_blob_store
from arbiter.tenancy.scoping import org_scope

_snapshot_ids = itertools.count(1001)

TOXIC = ["you are an idiot", "shut up you moron", "i hate you, loser", "you stupid fool", "get lost, jerk"]
SAFE = [
    "have a nice day",
    "thanks for the help",
    "the weather is lovely",
    "see you tomorrow",
    "great article",
]
TOXICITY = {"name": "toxicity", "labels": ["safe", "toxic"], "multi_label": False}
TOPIC = {"name": "topic", "labels": ["insult", "greeting", "other"], "multi_label": True}
SENTIMENT = {"name": "sentiment", "labels": ["negative", "positive"], "multi_label": False}


def toxicity_rows(count: int = 40, *, with_topic: bool = True) -> list[dict[str, Any]]:
    """Small, clearly separable rows: toxic insults and friendly small talk."""
    rows = []
    for i in range(count):
        toxic = i % 2 == 0
        text = f"{(TOXIC if toxic else SAFE)[(i // 2) % 5]} (message {i})"
        labels: dict[str, Any] = {"toxicity": ["toxic" if toxic else "safe"]}
        if with_topic:
            labels["topic"] = ["insult"] if toxic else (["greeting"] if i % 4 == 1 else ["other"])
        rows.append({"row": i + 1, "input": text, "labels": labels, "split": None})
    return rows


def sentiment_rows(count: int = 40) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        positive = i % 2 == 1
        text = f"{(SAFE if positive else TOXIC)[(i // 2) % 5]}, honestly ({i})"
        rows.append(
            {
                "row": i + 1,
                "input": text,
                "labels": {"sentiment": ["positive" if positive else "negative"]},
                "split": None,
            }
        )
    return rows


def deliver(event: Event) -> None:
    """Hand an event to the training service's handler as the consumer runner does."""
    get_event_type(event.type).validate(event.data)
    handler = handlers_for("training")[event.type]
    with transaction.atomic(using="training"), org_scope(event.org_id):
        handler(event)


def deliver_requests() -> int:
    """Deliver the training service's unsent `training.requested` events to its own handler."""
    rows = list(
        OutboxEvent.objects.using("training")
        .filter(type="training.requested", sent_at__isnull=True)
        .order_by("id")
    )
    for row in rows:
        deliver(Event.from_dict(row.body))
        row.sent_at = timezone.now()
        row.save(using="training", update_fields=["sent_at"])
    return len(rows)


def published(type: str) -> list[dict[str, Any]]:
    """The data of every event of `type` the training service wrote to its outbox, oldest first."""
    return [
        row.body["data"] for row in OutboxEvent.objects.using("training").filter(type=type).order_by("id")
    ]


def snapshot_event(
    *,
    org_id: int,
    rows: Sequence[dict[str, Any]],
    heads: Sequence[dict[str, Any]],
    invalid_percent: float = 0.0,
) -> Event:
    """Store a snapshot blob; return the `snapshot.created` event that announces it (not delivered yet)."""
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    key, sha256, _ = get_blob_store().put_content_addressed("snapshots", io.BytesIO(body), suffix=".jsonl")
    snapshot_id = next(_snapshot_ids)
    manifest = {
        "snapshot_id": snapshot_id,
        "dataset_id": snapshot_id // 10,
        "name": f"snapshot {snapshot_id}",
        "type": "text_classification",
        "input_column": "text",
        "heads": list(heads),
        "rows": len(rows),
        "sha256": sha256,
        "blob": key,
        "report": {"valid_rows": len(rows), "invalid_rows": 0, "invalid_percent": invalid_percent},
    }
    return Event(
        type="snapshot.created",
        source="/arbiter/dataset",
        subject=f"snapshots/{snapshot_id}",
        org_id=org_id,
        data=manifest,
    )


def snapshot_publish(
    *,
    org_id: int,
    rows: Sequence[dict[str, Any]],
    heads: Sequence[dict[str, Any]],
    invalid_percent: float = 0.0,
) -> int:
    """Store a snapshot blob and announce it with `snapshot.created`; returns the snapshot id."""
    event = snapshot_event(org_id=org_id, rows=rows, heads=heads, invalid_percent=invalid_percent)
    deliver(event)
    return int(event.data["snapshot_id"])


@pytest.fixture
def toxicity_snapshot(tenant: Any) -> int:
    return snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(), heads=[TOXICITY, TOPIC])
