"""Writes of the billing service: the usage ledger, plans, and the entitlements it announces.

Every change happens in one transaction on the billing database together with the `entitlements.changed` it
causes. Billing announces an org's entitlements when its plan changes, when a meter runs out of what the plan
includes, when its payment state changes, and on a heartbeat (`entitlements_refresh`), so the services that
enforce them never ask billing (see `arbiter.entitlements`).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.config.typed_settings import METERS
from arbiter.entitlements import billing_settings, period_of
from arbiter.events import publish
from arbiter.tenancy.scoping import org_scope
from services.billing import selectors
from services.billing.models import Account, LedgerEntry, UsageDay

log = logging.getLogger(__name__)

ALIAS = "billing"
# Subscription states in which Stripe collects payment for the plan.
PAYING_STATUSES = ("active", "trialing")


def account_get(*, org_id: int) -> Account:
    """The org's account, created on the default plan the first time billing hears of the org."""
    account = Account.objects.unscoped().filter(org_id=org_id).first()
    if account is not None:
        return account
    try:
        with transaction.atomic(using=ALIAS):
            return Account.objects.unscoped().create(org_id=org_id, plan=billing_settings().default_plan)
    except IntegrityError:
        return Account.objects.unscoped().get(org_id=org_id)


def payment_ok(account: Account) -> bool:
    """Whether the org's overage can be billed: always without Stripe; with it, a paying subscription."""
    settings = billing_settings()
    if not settings.stripe_enabled or not settings.plans[account.plan].paid:
        return True
    return account.subscription_status in PAYING_STATUSES


def entitlements_data(*, account: Account, now: datetime, reason: str) -> dict[str, Any]:
    """What `entitlements.changed` says of an org now (its `sequence` is filled in when published)."""
    settings = billing_settings()
    plan = settings.plans.get(account.plan) or settings.plans[settings.default_plan]
    start, end = period_of(now)
    used = selectors.period_usage(org_id=account.org_id, start=start, end=end)
    return {
        "sequence": account.sequence,
        "plan": account.plan,
        "paid": plan.paid,
        "payment_ok": payment_ok(account),
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "issued_at": now.isoformat(),
        "valid_until": (now + timedelta(hours=settings.grace_hours)).isoformat() if plan.paid else None,
        "reason": reason,
        "meters": {
            meter: {
                "included": plan.allowance(meter).included,
                "overage": plan.allowance(meter).overage,
                "used": used.get(meter, 0),
            }
            for meter in METERS
        },
    }


def entitlements_publish(*, account: Account, reason: str, now: datetime | None = None) -> dict[str, Any]:
    """Announce the org's entitlements (in the caller's transaction, or one of its own)."""
    now = now or timezone.now()
    with transaction.atomic(using=ALIAS):
        Account.objects.unscoped().filter(pk=account.pk).update(sequence=F("sequence") + 1, updated_at=now)
        account.refresh_from_db(fields=["sequence", "plan", "subscription_status", "payment_failed_at"])
        data = entitlements_data(account=account, now=now, reason=reason)
        publish(
            type="entitlements.changed", org_id=account.org_id, subject=f"orgs/{account.org_id}", data=data
        )
    return data


# --- the ledger ----------------------------------------------------------------------------------------------


def usage_record(
    *,
    org_id: int,
    event_id: str,
    meter: str,
    units: int,
    occurred_at: datetime,
    model_id: int | None = None,
) -> bool:
    """Record an event's billable units once (False: this event id is already in the ledger).

    When the units take the org past what its plan includes of the meter, the new state is announced.
    """
    if units <= 0:
        return False
    day = occurred_at.astimezone(UTC).date()
    with transaction.atomic(using=ALIAS):
        try:
            with transaction.atomic(using=ALIAS):
                LedgerEntry.objects.unscoped().create(
                    org_id=org_id,
                    event_id=event_id,
                    meter=meter,
                    day=day,
                    units=units,
                    model_id=model_id,
                    occurred_at=occurred_at,
                )
        except IntegrityError:
            return False
        key = {"org_id": org_id, "meter": meter, "day": day}
        if not UsageDay.objects.unscoped().filter(**key).update(units=F("units") + units):
            try:
                with transaction.atomic(using=ALIAS):
                    UsageDay.objects.unscoped().create(units=units, **key)
            except IntegrityError:
                UsageDay.objects.unscoped().filter(**key).update(units=F("units") + units)
        account = account_get(org_id=org_id)
        included = billing_settings().plans[account.plan].allowance(meter).included
        if included is not None and meter != "playground":
            start, end = period_of(occurred_at)
            used = selectors.period_usage(org_id=org_id, start=start, end=end).get(meter, 0)
            if used - units < included <= used:
                entitlements_publish(account=account, reason="usage")
                if not billing_settings().plans[account.plan].allowance(meter).overage:
                    publish(
                        type="billing.quota_reached",
                        org_id=org_id,
                        subject=f"orgs/{org_id}/meters/{meter}",
                        data={
                            "meter": meter,
                            "plan": account.plan,
                            "limit": included,
                            "used": used,
                            # The next period's first moment, when the allowance renews.
                            "period_end": datetime.combine(end, time.min, tzinfo=UTC).isoformat(),
                        },
                    )
    return True


def training_minutes_record(
    *, org_id: int, event_id: str, data: dict[str, Any], occurred_at: datetime
) -> bool:
    """A finished training run's time, in started minutes."""
    seconds = float(data.get("duration_seconds") or 0.0)
    return usage_record(
        org_id=org_id,
        event_id=event_id,
        meter="training_minute",
        units=math.ceil(seconds / 60),
        occurred_at=occurred_at,
        model_id=data.get("model_id"),
    )


# --- plans ---------------------------------------------------------------------------------------------------


def plan_set(*, org_id: int, plan: str, notice: str = "") -> Account:
    """Put the org on a plan; it applies at once (the new entitlements are announced in this transaction)."""
    plans = billing_settings().plans
    if plan not in plans:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"plan: '{plan}' is not a plan; choose one of {', '.join(plans)}.",
            details={"plan": ["Unknown plan."]},
        )
    with transaction.atomic(using=ALIAS):
        account = account_get(org_id=org_id)
        account = Account.objects.unscoped().select_for_update().get(pk=account.pk)
        if account.plan != plan:
            account.plan = plan
            account.plan_changed_at = timezone.now()
        account.notice = notice
        account.save(update_fields=["plan", "plan_changed_at", "notice"])
        entitlements_publish(account=account, reason="plan")
    return account


def entitlements_refresh(*, now: datetime | None = None) -> int:
    """The heartbeat: downgrade accounts whose failed payment outlived its grace, then announce every org's
    entitlements (keeping paid plans valid at the edge, and starting each new period afresh). Returns how many."""
    now = now or timezone.now()
    settings = billing_settings()
    grace = timedelta(days=settings.payment_grace_days)
    count = 0
    for account in Account.objects.unscoped().order_by("pk").iterator():
        with org_scope(account.org_id):
            failed_at = account.payment_failed_at
            if failed_at is not None and failed_at + grace <= now and account.plan != settings.default_plan:
                plan_set(
                    org_id=account.org_id,
                    plan=settings.default_plan,
                    notice=f"Moved to the {settings.default_plan} plan on {now.date().isoformat()}: the "
                    f"invoice payment failed on {failed_at.date().isoformat()} and was not paid within the "
                    "grace period.",
                )
                count += 1
                continue
            entitlements_publish(account=account, reason="refresh", now=now)
            count += 1
    return count
