"""Tables owned by this service (in its own database): webhook endpoints, their deliveries and attempts, and
recent public payloads (samples for Zapier).

Identity tables (orgs, members, API keys) are the kernel's (`arbiter.tenancy`) and live in this database too.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.utils import timezone

from arbiter.secrets import secret_decrypt, secret_encrypt
from arbiter.tenancy.scoping import OrgScopedModel


class WebhookEndpoint(OrgScopedModel):
    """A URL that receives an org's events: an endpoint made through the API or console, or a Zapier REST hook."""

    KIND_ENDPOINT = "endpoint"
    KIND_REST_HOOK = "rest_hook"
    KINDS = [(KIND_ENDPOINT, "endpoint"), (KIND_REST_HOOK, "REST hook")]

    DISABLED_GONE = "gone"
    DISABLED_FAILING = "failing"
    DISABLED_BY_USER = "user"

    kind = models.CharField(max_length=16, choices=KINDS, default=KIND_ENDPOINT)
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=500, blank=True, default="")
    # Event types or patterns: "training.completed", "training.*", "*".
    events = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    # Why it was disabled: "gone" (410), "failing" (the failure window), "user"; empty while enabled.
    disabled_reason = models.CharField(max_length=16, blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    # The first failure since the last success; the failure window counts from here.
    failing_since = models.DateTimeField(null=True, blank=True)
    # The signing secret (`whsec_` + base64), encrypted at rest (`arbiter.secrets`; read through `secret`); it is
    # shown to people once, when made.
    secret_encrypted = models.TextField()
    # After a rotation the old secret signs too (both signatures are sent) until `previous_secret_until`.
    previous_secret_encrypted = models.TextField(blank=True, default="")
    previous_secret_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["org_id", "enabled"], name="gateway_endpoint_org_enabled")]

    @property
    def secret(self) -> str:
        return secret_decrypt(self.secret_encrypted)

    @secret.setter
    def secret(self, plain: str) -> None:
        self.secret_encrypted = secret_encrypt(plain)

    @property
    def previous_secret(self) -> str:
        return secret_decrypt(self.previous_secret_encrypted) if self.previous_secret_encrypted else ""

    @previous_secret.setter
    def previous_secret(self, plain: str) -> None:
        self.previous_secret_encrypted = secret_encrypt(plain) if plain else ""

    def signing_secrets(self, *, now: datetime | None = None) -> list[str]:
        """The secrets that sign a message now: the current one, and the previous one during the overlap."""
        current = now or timezone.now()
        secrets = [self.secret]
        until = self.previous_secret_until
        if self.previous_secret and until is not None and until > current:
            secrets.append(self.previous_secret)
        return secrets


class WebhookDelivery(OrgScopedModel):
    """One event for one endpoint: the signed message (its `webhook-id` and body stay the same on every attempt)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STATUSES = [(PENDING, PENDING), (SUCCEEDED, SUCCEEDED), (FAILED, FAILED)]

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=100)
    # The `webhook-id` header: one per event and endpoint, kept across attempts and resends.
    message_id = models.CharField(max_length=64, unique=True)
    # The exact body sent (`{"type", "timestamp", "data"}`): the signature covers these bytes.
    body = models.TextField()
    status = models.CharField(max_length=16, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Attempts of the current round (a resend starts a new round on the schedule).
    round_attempts = models.PositiveIntegerField(default=0)
    # When the next attempt is due (pending deliveries); a worker holding it pushes it forward (its lease).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    event_time = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_id"], name="gateway_delivery_once_per_endpoint"
            )
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="gateway_delivery_due"),
            models.Index(fields=["endpoint", "-created_at"], name="gateway_delivery_log"),
        ]


class WebhookAttempt(OrgScopedModel):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"
    OUTCOMES = [(SUCCEEDED, SUCCEEDED), (FAILED, FAILED), (REFUSED, REFUSED)]

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    outcome = models.CharField(max_length=16, choices=OUTCOMES)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    # The first 2 KB of the answer, as text.
    response_body = models.TextField(blank=True, default="")
    error = models.CharField(max_length=500, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number", "id"]


class PublicEventSample(OrgScopedModel):
    """The last few public payloads of each type per org: Zapier's samples (`GET .../hooks/samples/{event}`)."""

    KEEP = 3

    event_type = models.CharField(max_length=100)
    event_id = models.CharField(max_length=64)
    body = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["org_id", "event_id"], name="gateway_sample_once"),
        ]
        indexes = [models.Index(fields=["org_id", "event_type", "-created_at"], name="gateway_sample_recent")]
