from __future__ import annotations

from django.db import models
from django.utils import timezone


class IdempotencyRecord(models.Model):
    """The first answer to a POST carrying an `Idempotency-Key`, replayed for retries with the same key.

    Lives in the database of the service that handled the request; code names the alias explicitly.
    """

    org_id = models.BigIntegerField()
    actor = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64)
    status_code = models.IntegerField(null=True)
    body = models.JSONField(null=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "api_idempotency"
        constraints = [
            models.UniqueConstraint(fields=["org_id", "actor", "key"], name="api_idempotency_once")
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.key})"
