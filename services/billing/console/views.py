"""The console's Billing page: the plan, this period's allowances and what remains, usage per meter and day,
and (for admins) choosing a plan."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stripe
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.pages import org_page
from arbiter.entitlements import METER_UNITS, billing_settings
from arbiter.tenancy.access import OrgAccess
from arbiter.tenancy.scopes import holds
from services.billing import logic, payments, selectors

CHART_DAYS = 30


def _usage_chart(*, days: int) -> dict[str, Any]:
    """Units per meter and day over the last `days` days, one series per meter that has any."""
    end = timezone.now().date()
    start = end - timedelta(days=days - 1)
    categories = [start + timedelta(days=i) for i in range(days)]
    index = {day: i for i, day in enumerate(categories)}
    values: dict[str, list[int]] = {}
    for row in selectors.usage_days(start=start, end=end):
        values.setdefault(row.meter, [0] * days)[index[row.day]] += row.units
    return {
        "days": [day.isoformat() for day in categories],
        "series": [
            {"name": METER_UNITS[meter], "values": values[meter]} for meter in METER_UNITS if meter in values
        ],
    }


@org_page("billing:read")
def billing(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    settings = billing_settings()
    summary = selectors.account_summary(
        org_id=access.org_id, now=timezone.now(), stripe_enabled=settings.stripe_enabled
    )
    context = {
        "summary": summary,
        "chart": _usage_chart(days=CHART_DAYS),
        "chart_days": CHART_DAYS,
        "plans": [
            {"name": name, "label": plan.label or name, "paid": plan.paid}
            for name, plan in settings.plans.items()
        ],
        "is_admin": holds(access.scopes, "admin"),
        "failing_reports": list(selectors.reports_failing()[:20]),
        "invoices": [],
        "invoices_error": "",
    }
    if settings.stripe_enabled:
        try:
            invoices = payments.invoices_of(account=selectors.account_of(org_id=access.org_id))
            # Amounts are in the currency's smallest unit; two decimals fit the currencies Stripe bills most.
            context["invoices"] = [
                {**i, "amount_due_display": f"{i['amount_due'] / 100:.2f} {i['currency'].upper()}"}
                for i in invoices
            ]
        except stripe.StripeError as error:
            context["invoices_error"] = f"Stripe did not answer: {error.user_message or error}"
    return render(request, "billing/billing.html", context)


@org_page("admin")
@require_POST
def plan_change(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    try:
        account = logic.plan_set(org_id=access.org_id, plan=request.POST.get("plan", ""))
    except ApiError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request, f"This org is now on the {account.plan} plan; its allowances apply at once."
        )
    return redirect(page_path("console-billing", org=org))


@org_page("admin")
@require_POST
def portal(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    """Off to Stripe's customer portal, to add a payment method; back to this page afterwards."""
    back = request.build_absolute_uri(page_path("console-billing", org=org))
    try:
        return redirect(payments.portal_url(org_id=access.org_id, return_url=back))
    except ApiError as error:
        messages.error(request, error.message)
    except stripe.StripeError as error:
        messages.error(request, f"Stripe did not answer: {error.user_message or error}")
    return redirect(page_path("console-billing", org=org))
