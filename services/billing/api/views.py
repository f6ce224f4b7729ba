"""The billing API: the org's plan and allowances, its usage per meter and day, and choosing a plan."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.parsers import JSONParser
from arbiter.config.routes import page_path
from arbiter.config.typed_settings import METERS
from arbiter.entitlements import billing_settings
from arbiter.tenancy.viewsets import OrgScopedViewSet
from services.billing import logic, payments, selectors
from services.billing.api import serializers as s

MAX_USAGE_DAYS = 366


def _day(value: Any, name: str) -> date | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{name}: use an ISO date, e.g. 2025-01-31.",
            details={name: ["Invalid date."]},
        ) from None


def _summary(org_id: int) -> dict[str, Any]:
    return selectors.account_summary(
        org_id=org_id, now=timezone.now(), stripe_enabled=billing_settings().stripe_enabled
    )


class BillingViewSet(OrgScopedViewSet):
    read_scope = "billing:read"
    write_scope = "admin"
    parser_classes = [JSONParser]

    @extend_schema(responses=s.BillingSerializer)
    def retrieve(self, request: Request, org: str) -> Response:
        return Response(s.BillingSerializer(_summary(self.org_id)).data)

    @extend_schema(request=s.BillingPlanRequestSerializer, responses=s.BillingSerializer)
    def plan(self, request: Request, org: str) -> Response:
        payload = s.BillingPlanRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        logic.plan_set(org_id=self.org_id, plan=payload.validated_data["plan"])
        return Response(s.BillingSerializer(_summary(self.org_id)).data)

    @extend_schema(
        responses=s.USAGE_RESPONSE,
        parameters=[
            OpenApiParameter("from", str, description="first day (default: the period's first day)"),
            OpenApiParameter("to", str, description="last day (default: today, UTC)"),
            OpenApiParameter("meter", str, enum=METERS, description="one meter (default: all)"),
        ],
    )
    def usage(self, request: Request, org: str) -> Response:
        end = _day(request.query_params.get("to"), "to") or timezone.now().date()
        start = _day(request.query_params.get("from"), "from") or end.replace(day=1)
        meter = request.query_params.get("meter") or None
        if meter is not None and meter not in METERS:
            raise ApiError(
                status=400,
                code="invalid",
                message=f"meter: choose one of {', '.join(METERS)}.",
                details={"meter": ["Invalid choice."]},
            )
        if start > end:
            raise ApiError(status=400, code="invalid", message="from: must not be after `to`.")
        if end - start >= timedelta(days=MAX_USAGE_DAYS):
            raise ApiError(
                status=400, code="invalid", message=f"Ask for at most {MAX_USAGE_DAYS} days at a time."
            )
        days = list(selectors.usage_days(start=start, end=end, meter=meter))
        totals: dict[str, int] = {}
        for row in days:
            totals[row.meter] = totals.get(row.meter, 0) + row.units
        return Response(
            {
                "from": start.isoformat(),
                "to": end.isoformat(),
                "meter": meter,
                "days": [
                    {"day": row.day.isoformat(), "meter": row.meter, "units": row.units} for row in days
                ],
                "totals": totals,
            }
        )

    @extend_schema(responses=s.BillingInvoicesSerializer)
    def invoices(self, request: Request, org: str) -> Response:
        invoices = payments.invoices_of(account=selectors.account_of(org_id=self.org_id))
        body = {"stripe": billing_settings().stripe_enabled, "invoices": invoices}
        return Response(s.BillingInvoicesSerializer(body).data)

    @extend_schema(request=s.BillingPortalRequestSerializer, responses=s.BillingPortalSerializer)
    def portal(self, request: Request, org: str) -> Response:
        payload = s.BillingPortalRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return_url = payload.validated_data.get("return_url") or request.build_absolute_uri(
            page_path("console-billing", org=org)
        )
        url = payments.portal_url(org_id=self.org_id, return_url=return_url)
        return Response(s.BillingPortalSerializer({"url": url}).data)
