"""Tables owned by the billing service: each org's account (plan, Stripe ids), the usage ledger and its daily
totals, the batches of usage reported to Stripe, and the Stripe webhook events applied.

Usage reaches billing only through events (`usage.recorded`, `training.completed`): one ledger entry per event,
recorded once (its event id is unique), so billing is the system of record for what each org used.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from arbiter.config.typed_settings import METERS
from arbiter.tenancy.scoping import OrgScopedModel

METER_CHOICES = [(meter, meter.replace("_", " ")) for meter in METERS]


class Account(OrgScopedModel):
    """An org's billing account: its plan, and its customer and subscription at Stripe when configured."""

    plan = models.CharField(max_length=50)
    plan_changed_at = models.DateTimeField(default=timezone.now)
    # Grows with each `entitlements.changed` of this org; consumers keep the newest.
    sequence = models.BigIntegerField(default=0)
    stripe_customer_id = models.CharField(max_length=100, blank=True, default="")
    stripe_subscription_id = models.CharField(max_length=100, blank=True, default="")
    # Stripe's subscription status (`active`, `past_due`, `canceled`, ...); empty without a subscription.
    subscription_status = models.CharField(max_length=30, blank=True, default="")
    # When an invoice payment failed and has not been paid since: the grace period runs from here.
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    # Why the plan last changed without the org asking (a downgrade after failed payments), for the console.
    notice = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org_id"], name="billing_account_once")]

    def __str__(self) -> str:
        return f"org {self.org_id} on {self.plan}"


class LedgerEntry(OrgScopedModel):
    """Billable units from one event: its id is unique, so a redelivered event is never counted twice."""

    event_id = models.CharField(max_length=64)
    meter = models.CharField(max_length=20, choices=METER_CHOICES)
    day = models.DateField()
    units = models.PositiveBigIntegerField()
    model_id = models.BigIntegerField(null=True, blank=True)
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(default=timezone.now)
    # The Stripe report that carries these units; null until the reporting worker batches it.
    report = models.ForeignKey("MeterReport", null=True, blank=True, on_delete=models.PROTECT)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event_id"], name="billing_ledger_event_once")]
        indexes = [
            models.Index(fields=["org_id", "meter", "day"], name="billing_ledger_org_meter_day"),
            models.Index(
                fields=["recorded_at"], condition=models.Q(report__isnull=True), name="billing_unreported"
            ),
        ]
        ordering = ["occurred_at", "id"]


class UsageDay(OrgScopedModel):
    """Units per org, meter and day: the ledger summed as it is written, for allowances and charts."""

    meter = models.CharField(max_length=20, choices=METER_CHOICES)
    day = models.DateField()
    units = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org_id", "meter", "day"], name="billing_usage_day_once")
        ]
        ordering = ["day", "meter"]


class MeterReport(OrgScopedModel):
    """Units of one meter sent to Stripe as one meter event. Its `identifier` is fixed when the batch is made,
    so a retry after any failure or crash sends the same identifier and Stripe counts it once."""

    meter = models.CharField(max_length=20, choices=METER_CHOICES)
    units = models.PositiveBigIntegerField()
    identifier = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Stripe's last refusal, shown in the console; the report stays queued and is retried.
    last_error = models.TextField(blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["identifier"], name="billing_report_identifier_once")]
        indexes = [
            models.Index(
                fields=["id"], condition=models.Q(sent_at__isnull=True), name="billing_report_unsent"
            )
        ]


class StripeEvent(models.Model):
    """A Stripe webhook event applied: a replay with the same id is acknowledged and changes nothing."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    received_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"
