"""Kernel tables that every service database carries: its outbox and the ids of events it has processed.

These models have no router entry: code always names the service's alias (`.using(alias)`).
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.utils import timezone


class OutboxEvent(models.Model):
    """An event written in the same transaction as the state change it announces; the relay sends it."""

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=64, unique=True)
    type = models.CharField(max_length=100)
    topic = models.CharField(max_length=200)
    key = models.CharField(max_length=64)
    # The CloudEvent exactly as it goes to Kafka (structured-mode JSON): the relay sends it as it is.
    payload = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "events_outbox"
        # The relay reads unsent rows in id order; a partial index holds only those, so it stays small however
        # many sent rows are kept, and marking a row sent removes it from the relay's path.
        indexes = [
            models.Index(
                fields=["id"], condition=models.Q(sent_at__isnull=True), name="events_outbox_unsent_id"
            )
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id} ({'sent' if self.sent_at else 'unsent'})"

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))


class ProcessedEvent(models.Model):
    """Written in the handler's transaction: a redelivered event is recognised and skipped."""

    consumer = models.CharField(max_length=100)
    event_id = models.CharField(max_length=64)
    type = models.CharField(max_length=100)
    processed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "events_processed"
        constraints = [models.UniqueConstraint(fields=["consumer", "event_id"], name="events_processed_once")]

    def __str__(self) -> str:
        return f"{self.consumer} processed {self.type} {self.event_id}"
