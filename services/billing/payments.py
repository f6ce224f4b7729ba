"""Stripe, when `STRIPE_API_KEY` is set: a customer per org, a subscription to the paid plan's metered prices,
usage reported as meter events, Stripe's webhooks applied once, invoices and the customer portal.

Usage leaves the ledger in `MeterReport`s: units of one org, meter and day, made in one transaction with the
ledger entries they carry, each with an `identifier` fixed when it is made. A report is marked sent only after
Stripe accepted it, so a crash or a timeout means sending it again, with the same identifier, which Stripe counts
once: a retry can never bill twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

import stripe
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from arbiter.entitlements import METER_UNITS, billing_settings
from arbiter.tenancy.scoping import org_scope
from services.billing import logic
from services.billing.models import Account, LedgerEntry, MeterReport, StripeEvent

log = logging.getLogger(__name__)

ALIAS = logic.ALIAS
# Stripe answers a meter event whose identifier it already has with this code: it was counted before.
DUPLICATE_CODES = ("resource_already_exists",)
HANDLED_EVENTS = (
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)


class StripeUnavailable(Exception):
    """Stripe could not be reached or asked us to slow down: the round stops and is tried again later."""


def client() -> stripe.StripeClient | None:
    """A Stripe client from the settings, or None when Stripe is not configured."""
    settings = billing_settings()
    if settings.stripe_api_key is None:
        return None
    base = settings.stripe_api_base
    return stripe.StripeClient(
        settings.stripe_api_key.get_secret_value(),
        max_network_retries=2,
        base_addresses={"api": base} if base else {},
    )


def event_name(meter: str) -> str:
    return f"arbiter_{meter}"


def price_lookup_key(*, plan: str, meter: str) -> str:
    return f"arbiter_{plan}_{meter}"


# --- customers, meters, subscriptions ------------------------------------------------------------------------


def meters_ensure(*, stripe_client: stripe.StripeClient) -> dict[str, str]:
    """One Billing Meter per billable unit (event name `arbiter_<meter>`, summed); returns meter -> meter id."""
    existing = {
        meter.event_name: meter.id
        for meter in stripe_client.v1.billing.meters.list(params={"status": "active", "limit": 100}).data
    }
    found: dict[str, str] = {}
    for meter, unit in METER_UNITS.items():
        name = event_name(meter)
        if name not in existing:
            created = stripe_client.v1.billing.meters.create(
                params={
                    "display_name": f"Arbiter: {unit}",
                    "event_name": name,
                    "default_aggregation": {"formula": "sum"},
                    "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
                    "value_settings": {"event_payload_key": "value"},
                },
                options={"idempotency_key": f"arbiter-meter-{name}"},
            )
            existing[name] = created.id
        found[meter] = existing[name]
    return found


def account_ensure(*, stripe_client: stripe.StripeClient, account: Account) -> Account:
    """The org's Stripe customer, and on a paid plan a subscription to the plan's metered prices (those with
    the lookup key `arbiter_<plan>_<meter>`). Idempotency keys make a retry after a crash create nothing twice."""
    settings = billing_settings()
    # Part of the keys: a later subscription (after a cancellation and a new plan) is a new request at Stripe.
    since = int(account.plan_changed_at.timestamp())
    if not account.stripe_customer_id:
        customer = stripe_client.v1.customers.create(
            params={"name": f"org {account.org_id}", "metadata": {"arbiter_org_id": str(account.org_id)}},
            options={"idempotency_key": f"arbiter-customer-{account.org_id}-{account.pk}-{since}"},
        )
        Account.objects.unscoped().filter(pk=account.pk).update(stripe_customer_id=customer.id)
        account.stripe_customer_id = customer.id
    plan = settings.plans.get(account.plan)
    if plan is not None and plan.paid and not account.stripe_subscription_id:
        keys = [price_lookup_key(plan=account.plan, meter=meter) for meter in plan.meters]
        prices = stripe_client.v1.prices.list(params={"lookup_keys": keys, "active": True, "limit": 100}).data
        if not prices:
            log.warning(
                "no Stripe price has a lookup key of %s: org %s has no subscription", keys, account.org_id
            )
            return account
        subscription = stripe_client.v1.subscriptions.create(
            params={
                "customer": account.stripe_customer_id,
                "items": [{"price": price.id} for price in prices],
                "metadata": {"arbiter_org_id": str(account.org_id), "arbiter_plan": account.plan},
            },
            options={"idempotency_key": f"arbiter-subscription-{account.org_id}-{account.plan}-{since}"},
        )
        with transaction.atomic(using=ALIAS), org_scope(account.org_id):
            Account.objects.unscoped().filter(pk=account.pk).update(
                stripe_subscription_id=subscription.id, subscription_status=subscription.status
            )
            account.refresh_from_db()
            logic.entitlements_publish(account=account, reason="payment")
    return account


# --- usage reports -------------------------------------------------------------------------------------------


def reports_prepare(*, limit: int) -> int:
    """Gather up to `limit` unreported ledger entries of orgs with a Stripe customer into reports, one per org,
    meter and day, in one transaction. Returns how many reports were made."""
    customers = Account.objects.unscoped().exclude(stripe_customer_id="").values_list("org_id", flat=True)
    made = 0
    with transaction.atomic(using=ALIAS):
        entries = list(
            LedgerEntry.objects.unscoped()
            .select_for_update(skip_locked=True)
            .filter(report__isnull=True, org_id__in=list(customers))
            .order_by("org_id", "meter", "day", "id")[:limit]
        )
        for (org_id, meter, _day), group in groupby(entries, key=lambda e: (e.org_id, e.meter, e.day)):
            rows = list(group)
            report = MeterReport.objects.unscoped().create(
                org_id=org_id,
                meter=meter,
                units=sum(row.units for row in rows),
                identifier=f"arbiter-{org_id}-{meter}-{rows[0].pk}",
            )
            LedgerEntry.objects.unscoped().filter(pk__in=[row.pk for row in rows]).update(report=report)
            made += 1
    return made


def report_send(*, stripe_client: stripe.StripeClient, report: MeterReport, customer_id: str) -> bool:
    """Send one report as a meter event. True: Stripe has it (now or from an earlier try); False: Stripe
    refused it, and the report stays queued with Stripe's message. Raises StripeUnavailable to back off."""
    last = LedgerEntry.objects.unscoped().filter(report=report).aggregate(last=Max("occurred_at"))["last"]
    moment = min(last or report.created_at, timezone.now())
    try:
        stripe_client.v1.billing.meter_events.create(
            params={
                "event_name": event_name(report.meter),
                "payload": {"stripe_customer_id": customer_id, "value": str(report.units)},
                "identifier": report.identifier,
                "timestamp": int(moment.timestamp()),
            }
        )
    except stripe.InvalidRequestError as error:
        if error.code not in DUPLICATE_CODES:
            MeterReport.objects.unscoped().filter(pk=report.pk).update(
                attempts=report.attempts + 1, last_error=f"Stripe refused it: {error.user_message or error}"
            )
            return False
    except (stripe.APIConnectionError, stripe.RateLimitError, stripe.AuthenticationError) as error:
        raise StripeUnavailable(str(error)) from error
    except stripe.APIError as error:
        raise StripeUnavailable(str(error)) from error
    MeterReport.objects.unscoped().filter(pk=report.pk).update(
        sent_at=timezone.now(), attempts=report.attempts + 1, last_error=""
    )
    return True


@dataclass
class RoundResult:
    sent: int = 0
    refused: int = 0


def report_round(*, stripe_client: stripe.StripeClient) -> RoundResult:
    """One round of the reporting worker: customers and subscriptions for orgs that need them, new reports
    from the ledger, then queued reports sent, oldest first, a batch at a time."""
    batch = billing_settings().report_batch
    meters_ensure(stripe_client=stripe_client)
    waiting = set(
        LedgerEntry.objects.unscoped()
        .filter(report__isnull=True)
        .order_by()
        .values_list("org_id", flat=True)
        .distinct()
    )
    for org_id in sorted(waiting):
        logic.account_get(org_id=org_id)
    paid = [name for name, plan in billing_settings().plans.items() if plan.paid]
    needing = Account.objects.unscoped().filter(org_id__in=waiting, stripe_customer_id="") | (
        Account.objects.unscoped().filter(plan__in=paid, stripe_subscription_id="")
    )
    for account in needing.order_by("pk"):
        try:
            account_ensure(stripe_client=stripe_client, account=account)
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as error:
            raise StripeUnavailable(str(error)) from error
        except stripe.StripeError as error:
            # Refused for this org (its usage waits unreported); the others go on.
            log.warning("Stripe refused the customer or subscription of org %s: %s", account.org_id, error)
    while reports_prepare(limit=batch * 10):
        pass
    result = RoundResult()
    customers = dict(Account.objects.unscoped().values_list("org_id", "stripe_customer_id"))
    last_id = 0
    while True:
        queued = list(
            MeterReport.objects.unscoped().filter(sent_at__isnull=True, pk__gt=last_id).order_by("pk")[:batch]
        )
        if not queued:
            return result
        for report in queued:
            last_id = report.pk
            if report_send(stripe_client=stripe_client, report=report, customer_id=customers[report.org_id]):
                result.sent += 1
            else:
                result.refused += 1


# --- webhooks ------------------------------------------------------------------------------------------------


def webhook_apply(*, event: dict[str, Any]) -> bool:
    """Apply a verified Stripe event once (False: its id was applied before, or it concerns no org here)."""
    obj = event.get("data", {}).get("object", {}) or {}
    with transaction.atomic(using=ALIAS):
        try:
            with transaction.atomic(using=ALIAS):
                StripeEvent.objects.create(event_id=str(event["id"]), type=str(event.get("type", "")))
        except IntegrityError:
            return False
        kind = event.get("type")
        if kind not in HANDLED_EVENTS:
            return True
        customer = obj.get("customer")
        account = (
            Account.objects.unscoped().select_for_update().filter(stripe_customer_id=customer).first()
            if customer
            else None
        )
        if account is None:
            return False
        with org_scope(account.org_id):
            _apply(kind=str(kind), obj=obj, account=account, at=_event_time(event))
    return True


def _event_time(event: dict[str, Any]) -> datetime:
    created = event.get("created")
    return datetime.fromtimestamp(int(created), UTC) if created else timezone.now()


def _apply(*, kind: str, obj: dict[str, Any], account: Account, at: datetime) -> None:
    settings = billing_settings()
    if kind == "invoice.paid":
        account.payment_failed_at = None
        account.save(update_fields=["payment_failed_at"])
    elif kind == "invoice.payment_failed":
        # The grace period runs from the first failure; the heartbeat downgrades when it is over.
        if account.payment_failed_at is None:
            account.payment_failed_at = at
            account.save(update_fields=["payment_failed_at"])
    elif kind == "customer.subscription.updated":
        account.stripe_subscription_id = str(obj.get("id") or account.stripe_subscription_id)
        account.subscription_status = str(obj.get("status") or "")
        account.save(update_fields=["stripe_subscription_id", "subscription_status"])
    elif kind == "customer.subscription.deleted":
        if obj.get("id") and obj.get("id") != account.stripe_subscription_id:
            return  # an older subscription of this customer ended: not the org's current one
        account.stripe_subscription_id = ""
        account.subscription_status = "canceled"
        account.save(update_fields=["stripe_subscription_id", "subscription_status"])
        if account.plan != settings.default_plan and settings.plans[account.plan].paid:
            logic.plan_set(
                org_id=account.org_id,
                plan=settings.default_plan,
                notice=f"Moved to the {settings.default_plan} plan on {at.date().isoformat()}: the Stripe "
                "subscription was canceled.",
            )
            return
    logic.entitlements_publish(account=account, reason="payment")


# --- invoices and the customer portal ------------------------------------------------------------------------


def invoices_of(*, account: Account | None, limit: int = 24) -> list[dict[str, Any]]:
    """The org's invoices at Stripe, newest first, with their hosted links (none without Stripe)."""
    stripe_client = client()
    if stripe_client is None or account is None or not account.stripe_customer_id:
        return []
    invoices = stripe_client.v1.invoices.list(params={"customer": account.stripe_customer_id, "limit": limit})
    rows = [invoice.to_dict() for invoice in invoices.data]
    return [
        {
            "id": invoice["id"],
            "number": invoice.get("number") or "",
            "status": invoice.get("status") or "",
            "amount_due": int(invoice.get("amount_due") or 0),
            "amount_paid": int(invoice.get("amount_paid") or 0),
            "currency": invoice.get("currency") or "",
            "created": datetime.fromtimestamp(int(invoice.get("created") or 0), UTC),
            "hosted_invoice_url": invoice.get("hosted_invoice_url") or "",
        }
        for invoice in rows
    ]


def portal_url(*, org_id: int, return_url: str) -> str:
    """A Stripe customer-portal link where the org's admin adds a payment method or sees invoices."""
    stripe_client = client()
    if stripe_client is None:
        raise logic.ApiError(
            status=409, code="stripe_not_configured", message="Stripe is not configured on this installation."
        )
    account = account_ensure(stripe_client=stripe_client, account=logic.account_get(org_id=org_id))
    session = stripe_client.v1.billing_portal.sessions.create(
        params={"customer": account.stripe_customer_id, "return_url": return_url}
    )
    return str(session.url)
