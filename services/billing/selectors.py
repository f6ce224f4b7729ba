"""Reads of the billing service. Functions taking `org_id` read across the org scope on purpose (consumers and
the heartbeat); the others run with the org in scope."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import QuerySet, Sum

from arbiter.entitlements import METER_UNITS, PER_MODEL_METERS, billing_settings, period_of
from services.billing.models import Account, MeterReport, UsageDay


def period_usage(*, org_id: int, start: date, end: date) -> dict[str, int]:
    """Units per meter from `start` (inclusive) to `end` (exclusive)."""
    rows = (
        UsageDay.objects.unscoped()
        .filter(org_id=org_id, day__gte=start, day__lt=end)
        .values("meter")
        .annotate(total=Sum("units"))
    )
    return {row["meter"]: int(row["total"] or 0) for row in rows}


def usage_days(*, start: date, end: date, meter: str | None = None) -> QuerySet[UsageDay]:
    """The org's units per meter and day, `start` to `end` inclusive."""
    days = UsageDay.objects.filter(day__gte=start, day__lte=end)
    if meter:
        days = days.filter(meter=meter)
    return days.order_by("day", "meter")


def account_of(*, org_id: int) -> Account | None:
    return Account.objects.filter(org_id=org_id).first()


def reports_failing() -> QuerySet[MeterReport]:
    """The org's usage reports Stripe refused and that wait for a retry."""
    return MeterReport.objects.filter(sent_at__isnull=True).exclude(last_error="").order_by("created_at")


def account_summary(*, org_id: int, now: datetime, stripe_enabled: bool) -> dict[str, Any]:
    """The org's plan, this period and, per meter, what the plan includes, what was used and what remains."""
    settings = billing_settings()
    account = account_of(org_id=org_id)
    plan_name = account.plan if account is not None else settings.default_plan
    plan = settings.plans.get(plan_name) or settings.plans[settings.default_plan]
    start, end = period_of(now)
    used = period_usage(org_id=org_id, start=start, end=end)
    meters = []
    for meter, unit in METER_UNITS.items():
        allowance = plan.allowance(meter)
        spent = used.get(meter, 0)
        meters.append(
            {
                "meter": meter,
                "unit": unit,
                "included": allowance.included,
                "used": spent,
                "remaining": None
                if allowance.included is None or meter in PER_MODEL_METERS
                else max(0, allowance.included - spent),
                "overage": allowance.overage,
                "per_model": meter in PER_MODEL_METERS,
            }
        )
    return {
        "plan": plan_name,
        "plan_label": plan.label or plan_name,
        "paid": plan.paid,
        "notice": account.notice if account is not None else "",
        "period": {"start": start, "end": end - timedelta(days=1)},
        "meters": meters,
        "plans": list(settings.plans),
        "stripe": {
            "enabled": stripe_enabled,
            "customer": bool(account and account.stripe_customer_id),
            "subscription_status": account.subscription_status if account is not None else "",
        },
    }
