"""Entitlements: what an org's plan lets it use, as the billing service announces it, checked at the edge.

Billing is the system of record for usage and plans. It publishes `entitlements.changed` for an org when its
plan changes, when a meter runs out of its included amount, when a payment fails or recovers, and every
`ARBITER_BILLING_REFRESH_SECONDS` for every org (a heartbeat). Services that do billable work (inference for
classifications and the playground, training for training minutes) keep the last one per org in a read model
of their own (a concrete `EntitlementRecord`) and ask `entitlements_check()` before the work: a dictionary
lookup while the cached record is fresh, one indexed row read otherwise, and never a call to billing.

When billing's events stop arriving (billing down, the broker down): an org billing never announced is on the
default plan with nothing used. A paid plan's entitlements carry `valid_until` (issued time plus
`ARBITER_BILLING_GRACE_HOURS`); the heartbeat moves it on. Past it, the org is served as the default plan
would serve it, with the usage last announced, until billing speaks again: paid orgs keep their plan for the
whole grace period of an outage, and an org whose subscription ended while the events were lost cannot keep
paid limits forever. Free limits never depend on freshness. Counts are billing's, so enforcement lags usage by
the event round trip (seconds): an org can exceed an allowance by what it sends meanwhile, and billing bills it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.config.typed_settings import BillingSettings, arbiter_settings
from arbiter.tenancy.scoping import OrgScopedModel

# The playground's allowance is per model and for good: waiting does not bring it back.
PER_MODEL_METERS = frozenset({"playground"})
METER_UNITS = {
    "classification": "classifications",
    "playground": "playground queries",
    "auto_label": "auto-labels",
    "training_minute": "training minutes",
    "llm_call": "LLM calls",
}
# How long a process trusts its cached copy of a record before reading the read model again.
CACHE_SECONDS = 5.0


def billing_settings() -> BillingSettings:
    return arbiter_settings().billing


def period_of(moment: datetime) -> tuple[date, date]:
    """The billing period (a calendar month, UTC) holding `moment`: its first day and the next period's."""
    day = moment.astimezone(UTC).date()
    start = day.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class MeterEntitlement:
    included: int | None
    overage: bool
    used: int


@dataclass(frozen=True)
class Entitlements:
    org_id: int
    plan: str
    paid: bool
    # False while a paid plan lacks a working payment method (Stripe configured): its overage is refused.
    payment_ok: bool
    period_start: date
    period_end: date
    meters: dict[str, MeterEntitlement]
    valid_until: datetime | None = None

    @classmethod
    def for_plan(
        cls, *, org_id: int, plan: str, used: dict[str, int] | None = None, now: datetime | None = None
    ) -> Entitlements:
        """What the configured plan allows, with this usage (none: nothing used yet)."""
        definition = billing_settings().plans[plan]
        start, end = period_of(now or timezone.now())
        return cls(
            org_id=org_id,
            plan=plan,
            paid=definition.paid,
            payment_ok=True,
            period_start=start,
            period_end=end,
            meters={
                meter: MeterEntitlement(
                    included=definition.allowance(meter).included,
                    overage=definition.allowance(meter).overage,
                    used=(used or {}).get(meter, 0),
                )
                for meter in METER_UNITS
            },
        )

    @classmethod
    def from_event(cls, *, org_id: int, data: dict[str, Any]) -> Entitlements:
        valid_until = data.get("valid_until")
        return cls(
            org_id=org_id,
            plan=str(data["plan"]),
            paid=bool(data["paid"]),
            payment_ok=bool(data.get("payment_ok", True)),
            period_start=date.fromisoformat(data["period_start"]),
            period_end=date.fromisoformat(data["period_end"]),
            meters={
                meter: MeterEntitlement(
                    included=value.get("included"), overage=bool(value["overage"]), used=int(value["used"])
                )
                for meter, value in data["meters"].items()
            },
            valid_until=datetime.fromisoformat(valid_until) if valid_until else None,
        )

    def effective(self, now: datetime) -> Entitlements:
        """These entitlements as they apply at `now`: a new period starts with nothing used, and a paid plan
        billing has not confirmed within its grace period falls back to the default plan."""
        used = {meter: value.used for meter, value in self.meters.items()}
        if now >= _midnight(self.period_end):
            used = {meter: value for meter, value in used.items() if meter in PER_MODEL_METERS}
        if self.valid_until is not None and now > self.valid_until:
            return Entitlements.for_plan(
                org_id=self.org_id, plan=billing_settings().default_plan, used=used, now=now
            )
        if used == {meter: value.used for meter, value in self.meters.items()}:
            return self
        start, end = period_of(now)
        return Entitlements(
            org_id=self.org_id,
            plan=self.plan,
            paid=self.paid,
            payment_ok=self.payment_ok,
            period_start=start,
            period_end=end,
            meters={
                meter: MeterEntitlement(
                    included=value.included, overage=value.overage, used=used.get(meter, 0)
                )
                for meter, value in self.meters.items()
            },
            valid_until=self.valid_until,
        )

    def check(self, *, meter: str, units: int, used: int | None = None, now: datetime | None = None) -> None:
        """Raise the 402 or 429 a request for `units` more of `meter` gets; `used` overrides the announced
        count (the playground counts its queries per model itself)."""
        allowance = self.meters.get(meter)
        if allowance is None or allowance.included is None:
            return
        spent = allowance.used if used is None else used
        if spent + units <= allowance.included:
            return
        if allowance.overage and self.payment_ok:
            return  # metered beyond what the plan includes, and billed
        raise quota_error(entitlements=self, meter=meter, used=spent, now=now or timezone.now())


def quota_error(*, entitlements: Entitlements, meter: str, used: int, now: datetime) -> ApiError:
    """The answer to a request beyond an allowance, saying which, how much, and how to lift it."""
    allowance = entitlements.meters[meter]
    limit = allowance.included or 0
    what = METER_UNITS.get(meter, meter)
    per_model = meter in PER_MODEL_METERS
    scope = "per model" if per_model else "a month"
    details: dict[str, Any] = {
        "meter": meter,
        "limit": limit,
        "used": used,
        "plan": entitlements.plan,
        "period_end": None if per_model else entitlements.period_end.isoformat(),
    }
    upgrade = "upgrade to a paid plan on the console's Billing page (or PUT .../billing/plan as an admin)"
    if allowance.overage and not entitlements.payment_ok:
        details["lift"] = "Add a payment method on the console's Billing page."
        return ApiError(
            status=402,
            code="payment_required",
            message=f"The {entitlements.plan} plan includes {limit:,} {what} {scope} and this org has used "
            f"{used:,}; more are billed, which needs a working payment method. {details['lift']}",
            details=details,
        )
    if per_model:
        details["lift"] = f"Deploy the model and call its classify endpoint, or {upgrade}."
        return ApiError(
            status=402,
            code="quota_exceeded",
            message=f"This model's {limit:,} free {what} on the {entitlements.plan} plan are used up "
            f"({used:,} made). {details['lift'][:1].upper()}{details['lift'][1:]}",
            details=details,
        )
    resets = _midnight(entitlements.period_end)
    details["lift"] = (
        f"Wait until {resets.date().isoformat()} (UTC), when the allowance renews, or {upgrade}."
    )
    return ApiError(
        status=429,
        code="quota_exceeded",
        message=f"The {entitlements.plan} plan includes {limit:,} {what} {scope}; this org has used {used:,} "
        f"this period. {details['lift']}",
        details=details,
        headers={"Retry-After": str(max(1, int((resets - now).total_seconds())))},
    )


# --- the read model ------------------------------------------------------------------------------------------


class EntitlementRecord(OrgScopedModel):
    """The last `entitlements.changed` of an org, in a service that enforces them (one row per org)."""

    sequence = models.BigIntegerField(default=0)
    data = models.JSONField(default=dict)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True


class _Cache:
    """Entitlements per (read model, org) for a few seconds: the hot path's lookup is a dictionary read.

    Hand-written rather than a caching library: one dictionary and a clock, cleared when this process applies
    an event."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int, int], tuple[float, Entitlements]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> Entitlements | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple[str, int, int], value: Entitlements) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + CACHE_SECONDS, value)

    def clear(self, key: tuple[str, int, int] | None = None) -> None:
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)


_cache = _Cache()


def _key(model: type[EntitlementRecord], org_id: int) -> tuple[str, int, int]:
    # The settings object is part of the key: a change of configuration (tests) is seen at once.
    return model._meta.label, int(org_id), id(arbiter_settings())


def entitlements_apply(
    *, model: type[EntitlementRecord], alias: str, org_id: int, data: dict[str, Any]
) -> bool:
    """Keep an org's newest announced entitlements (an older or repeated one changes nothing)."""
    sequence = int(data["sequence"])
    with transaction.atomic(using=alias):
        record = model.objects.unscoped().select_for_update().filter(org_id=org_id).first()
        if record is not None and record.sequence >= sequence:
            return False
        if record is None:
            record = model(org_id=org_id)
        record.sequence = sequence
        record.data = dict(data)
        record.received_at = timezone.now()
        record.save()
    _cache.clear(_key(model, org_id))
    return True


def entitlements_for(*, model: type[EntitlementRecord], org_id: int) -> Entitlements:
    """An org's entitlements as last announced (the default plan if never), from the cache when fresh."""
    key = _key(model, org_id)
    cached = _cache.get(key)
    if cached is None:
        record = model.objects.unscoped().filter(org_id=org_id).only("data").first()
        cached = (
            Entitlements.from_event(org_id=org_id, data=record.data)
            if record is not None
            else Entitlements.for_plan(org_id=org_id, plan=billing_settings().default_plan)
        )
        _cache.put(key, cached)
    return cached


def entitlements_check(
    *, model: type[EntitlementRecord], org_id: int, meter: str, units: int, used: int | None = None
) -> Entitlements:
    """Refuse (402 or 429, see `quota_error`) a request beyond the org's entitlements; return them."""
    now = timezone.now()
    entitlements = entitlements_for(model=model, org_id=org_id).effective(now)
    entitlements.check(meter=meter, units=units, used=used, now=now)
    return entitlements


def entitlements_cache_clear() -> None:
    """Forget every cached copy (tests that change plans through settings)."""
    _cache.clear()
