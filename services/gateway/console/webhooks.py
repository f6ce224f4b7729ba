"""Console pages of webhooks: the endpoints (create one, its secret shown once), an endpoint's deliveries, and a
delivery's attempts; resend one or every failed delivery since a time."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.pages import org_page
from arbiter.tenancy.access import OrgAccess
from services.gateway import logic, selectors
from services.gateway.catalogue import PUBLIC_TYPES, TEST_TYPE
from services.gateway.models import WebhookDelivery, WebhookEndpoint


def _endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise Http404
    return endpoint


@org_page("admin")
@require_http_methods(["GET", "POST"])
def webhooks(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    created = None
    error = None
    url, description, events = "", "", list[str]()
    if request.method == "POST":
        url, description = request.POST.get("url", ""), request.POST.get("description", "")
        events = request.POST.getlist("events")
        try:
            created = logic.endpoint_create(
                org_id=access.org_id, url=url, events=events, description=description
            )
        except ApiError as exc:
            error = exc.message
    context = {
        "endpoints": selectors.endpoints(kind=None),
        "event_types": [t for t in PUBLIC_TYPES.values() if t.type != TEST_TYPE],
        "created": created,
        "error": error,
        "form": {"url": url, "description": description, "events": events},
    }
    return render(request, "gateway/webhooks.html", context, status=400 if error else 200)


def _since(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed


@org_page("admin")
@require_http_methods(["GET", "POST"])
def webhook(request: HttpRequest, endpoint_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    endpoint = _endpoint(endpoint_id)
    here = page_path("console-webhook", org=org, endpoint_id=endpoint.pk)
    rotated = None
    if request.method == "POST":
        action = request.POST.get("action")
        try:
            if action == "enable":
                logic.endpoint_update(endpoint=endpoint, enabled=True)
                messages.success(request, "Enabled: new events are delivered again.")
            elif action == "disable":
                logic.endpoint_update(endpoint=endpoint, enabled=False)
                messages.success(request, "Disabled: nothing is delivered until you enable it.")
            elif action == "test":
                logic.endpoint_test(endpoint=endpoint)
                messages.success(request, "A webhook.test ping is on its way; it appears below.")
            elif action == "resend":
                since = _since(request.POST.get("since", ""))
                if since is None:
                    raise ApiError(status=400, code="invalid", message="since: give a date and time.")
                count = logic.deliveries_resend_failed(endpoint=endpoint, since=since)
                messages.success(request, f"Resending {count} failed deliver{'y' if count == 1 else 'ies'}.")
            elif action == "rotate":
                rotated = logic.secret_rotate(endpoint=endpoint)
            elif action == "delete":
                logic.endpoint_delete(endpoint=endpoint)
                messages.success(request, "Deleted the endpoint and its delivery log.")
                return redirect(page_path("console-webhooks", org=org))
            else:
                raise ApiError(status=400, code="invalid", message="Unknown action.")
        except ApiError as exc:
            messages.error(request, exc.message)
        if rotated is None:
            return redirect(here)
    wanted = request.GET.get("status") or None
    if wanted not in (None, WebhookDelivery.PENDING, WebhookDelivery.SUCCEEDED, WebhookDelivery.FAILED):
        wanted = None
    deliveries = Paginator(selectors.endpoint_deliveries(endpoint_id=endpoint.pk, status=wanted), 50)
    page = deliveries.get_page(request.GET.get("page"))
    context = {
        "endpoint": endpoint,
        "page": page,
        "status": wanted or "",
        "rotated": rotated,
        "since_default": (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
    }
    return render(request, "gateway/webhook.html", context)


@org_page("admin")
@require_http_methods(["GET", "POST"])
def webhook_delivery(
    request: HttpRequest, endpoint_id: int, delivery_id: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    endpoint = _endpoint(endpoint_id)
    delivery = selectors.endpoint_deliveries(endpoint_id=endpoint.pk).filter(pk=delivery_id).first()
    if delivery is None:
        raise Http404
    if request.method == "POST":
        try:
            logic.delivery_resend(delivery=delivery)
            messages.success(request, "Resending it now, with the same webhook-id.")
        except ApiError as exc:
            messages.error(request, exc.message)
        return redirect(
            page_path("console-webhook-delivery", org=org, endpoint_id=endpoint.pk, delivery_id=delivery.pk)
        )
    return render(request, "gateway/webhook_delivery.html", {"endpoint": endpoint, "delivery": delivery})
