"""Writes of the gateway's webhooks: endpoints and REST hooks, their secrets, deliveries made from events, resends.

The delivery worker (`services.gateway.delivery`) makes the attempts; everything here runs in the caller's
request or event transaction.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.config.typed_settings import arbiter_settings
from arbiter.egress import EgressFailed, EgressPolicy, EgressRefused, check_url, redact_url, resolve_checked
from arbiter.events import publish
from arbiter.tenancy.models import Membership
from arbiter.tenancy.scopes import Role
from services.gateway.catalogue import PUBLIC_TYPES, TEST_TYPE, pattern_valid
from services.gateway.catalogue import matches as pattern_matches
from services.gateway.models import PublicEventSample, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_EVENTS = 50


def webhook_policy() -> EgressPolicy:
    """What webhook URLs may reach: public addresses, plus `ARBITER_WEBHOOK_ALLOWED_NETWORKS`; https only in
    production."""
    settings = arbiter_settings()
    return EgressPolicy.build(
        use="webhook",
        allowed_networks=settings.webhooks.allowed_networks,
        production=settings.core.env == "production",
    )


def secret_new() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _url_checked(url: str, *, field: str = "url") -> str:
    url = (url or "").strip()
    if not url:
        raise ApiError(status=400, code="invalid", message=f"{field}: give the URL that receives the events.")
    if len(url) > 2000:
        raise ApiError(status=400, code="invalid", message=f"{field}: at most 2000 characters.")
    policy = webhook_policy()
    try:
        parts = check_url(url, policy)
        resolve_checked(parts.hostname or "", parts.port or 443, policy)
    except EgressRefused as refused:
        raise ApiError(
            status=400, code="invalid", message=f"{field}: {refused}", details={field: [str(refused)]}
        ) from None
    except EgressFailed:
        pass  # a name that does not resolve yet may resolve later; every attempt checks it again
    return url


def _events_checked(events: Sequence[str], *, field: str = "events") -> list[str]:
    cleaned = sorted({str(e).strip() for e in events if str(e).strip()})
    if not cleaned:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{field}: name at least one event type or pattern (e.g. training.completed, training.*, *).",
        )
    if len(cleaned) > MAX_EVENTS:
        raise ApiError(status=400, code="invalid", message=f"{field}: at most {MAX_EVENTS} entries.")
    unknown = [e for e in cleaned if not pattern_valid(e)]
    if unknown:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{field}: {', '.join(unknown)} matches no event type; see GET /api/v1/webhooks/event-types.",
            details={field: unknown},
        )
    return cleaned


def endpoint_create(
    *,
    org_id: int,
    url: str,
    events: Sequence[str],
    description: str = "",
    kind: str = WebhookEndpoint.KIND_ENDPOINT,
) -> WebhookEndpoint:
    field = "target_url" if kind == WebhookEndpoint.KIND_REST_HOOK else "url"
    checked_url = _url_checked(url, field=field)
    checked_events = _events_checked(
        events, field="event" if kind == WebhookEndpoint.KIND_REST_HOOK else "events"
    )
    with transaction.atomic():
        endpoint = WebhookEndpoint(
            kind=kind,
            url=checked_url,
            events=checked_events,
            description=description,
        )
        endpoint.secret = secret_new()
        endpoint.org_id = org_id
        endpoint.save()
    log.info("webhook endpoint created", extra={"endpoint_id": endpoint.pk, "url": redact_url(checked_url)})
    return endpoint


def endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    events: Sequence[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    if url is not None:
        endpoint.url = _url_checked(url)
    if events is not None:
        endpoint.events = _events_checked(events)
    if description is not None:
        endpoint.description = description
    if enabled is not None and enabled != endpoint.enabled:
        endpoint.enabled = enabled
        if enabled:
            # Enabled again: a fresh start for the failure window.
            endpoint.disabled_reason, endpoint.disabled_at, endpoint.failing_since = "", None, None
        else:
            endpoint.disabled_reason, endpoint.disabled_at = WebhookEndpoint.DISABLED_BY_USER, timezone.now()
    endpoint.updated_at = timezone.now()
    endpoint.save()
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    endpoint.delete()


def secret_rotate(*, endpoint: WebhookEndpoint, overlap_s: float | None = None) -> str:
    """A new signing secret; the old one keeps signing (both signatures are sent) for `overlap_s` seconds."""
    overlap = arbiter_settings().webhooks.secret_overlap_s if overlap_s is None else overlap_s
    now = timezone.now()
    with transaction.atomic():
        if overlap > 0:
            endpoint.previous_secret = endpoint.secret
            endpoint.previous_secret_until = now + timedelta(seconds=overlap)
        else:
            endpoint.previous_secret, endpoint.previous_secret_until = "", None
        endpoint.secret = secret_new()
        endpoint.updated_at = now
        endpoint.save(
            update_fields=[
                "secret_encrypted",
                "previous_secret_encrypted",
                "previous_secret_until",
                "updated_at",
            ]
        )
    return endpoint.secret


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def message_id(*, event_id: str, endpoint_id: int) -> str:
    """The `webhook-id` of one event for one endpoint: the same on every attempt and after a restart."""
    return "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, f"arbiter:{event_id}:{endpoint_id}").hex


def message_body(*, type: str, time: datetime, data: Mapping[str, Any]) -> str:
    return json.dumps(
        {"type": type, "timestamp": _timestamp(time), "data": dict(data)}, separators=(",", ":")
    )


def _deliveries_create(
    *, org_id: int, endpoints: Sequence[WebhookEndpoint], event_id: str, type: str, time: datetime, body: str
) -> list[WebhookDelivery]:
    now = timezone.now()
    rows = []
    for endpoint in endpoints:
        delivery = WebhookDelivery(
            endpoint=endpoint,
            event_id=event_id,
            event_type=type,
            message_id=message_id(event_id=event_id, endpoint_id=endpoint.pk),
            body=body,
            next_attempt_at=now + timedelta(seconds=arbiter_settings().webhooks.retry_schedule[0]),
            event_time=time,
        )
        delivery.org_id = org_id
        rows.append(delivery)
    # An event handled twice (a redelivery) makes nothing twice.
    WebhookDelivery.objects.unscoped().bulk_create(rows, ignore_conflicts=True)
    return rows


def event_fan_out(
    *, org_id: int, event_id: str, type: str, time: datetime, data: Mapping[str, Any]
) -> list[WebhookDelivery]:
    """Turn one of the org's events into a delivery for each enabled endpoint that subscribed to its type, and
    keep its payload as a sample."""
    public = PUBLIC_TYPES[type]
    payload = public.project(data)
    body = message_body(type=type, time=time, data=payload)
    _sample_keep(org_id=org_id, event_id=event_id, type=type, body=json.loads(body))
    endpoints = [
        endpoint
        for endpoint in WebhookEndpoint.objects.unscoped().filter(org_id=org_id, enabled=True)
        if pattern_matches(endpoint.events, type)
    ]
    if not endpoints:
        return []
    return _deliveries_create(
        org_id=org_id, endpoints=endpoints, event_id=event_id, type=type, time=time, body=body
    )


def _sample_keep(*, org_id: int, event_id: str, type: str, body: dict[str, Any]) -> None:
    try:
        with transaction.atomic():
            sample = PublicEventSample(event_type=type, event_id=event_id, body=body)
            sample.org_id = org_id
            sample.save()
    except IntegrityError:
        return
    stale = list(
        PublicEventSample.objects.unscoped()
        .filter(org_id=org_id, event_type=type)
        .order_by("-created_at", "-id")
        .values_list("pk", flat=True)[PublicEventSample.KEEP :]
    )
    if stale:
        PublicEventSample.objects.unscoped().filter(pk__in=stale).delete()


def endpoint_test(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """A `webhook.test` ping to this endpoint alone (even if disabled it is recorded, and not sent)."""
    event_id = f"test_{uuid.uuid4().hex}"
    now = timezone.now()
    data = {"endpoint_id": endpoint.pk, "message": "Hello from Arbiter: this endpoint receives webhooks."}
    body = message_body(type=TEST_TYPE, time=now, data=data)
    with transaction.atomic():
        _deliveries_create(
            org_id=endpoint.org_id,
            endpoints=[endpoint],
            event_id=event_id,
            type=TEST_TYPE,
            time=now,
            body=body,
        )
    return WebhookDelivery.objects.get(endpoint=endpoint, event_id=event_id)


def delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again, now, with the same `webhook-id` and body; a new round on the retry schedule."""
    if not delivery.endpoint.enabled:
        raise ApiError(
            status=409,
            code="endpoint_disabled",
            message="The endpoint is disabled; enable it (PATCH enabled=true) before resending.",
        )
    if delivery.status == WebhookDelivery.PENDING:
        raise ApiError(status=409, code="pending", message="This delivery is still being attempted.")
    delivery.status = WebhookDelivery.PENDING
    delivery.round_attempts = 0
    delivery.next_attempt_at = timezone.now()
    delivery.finished_at = None
    delivery.save(update_fields=["status", "round_attempts", "next_attempt_at", "finished_at"])
    return delivery


def deliveries_resend_failed(*, endpoint: WebhookEndpoint, since: datetime) -> int:
    """Resend every failed delivery of the endpoint made since `since`; returns how many."""
    if not endpoint.enabled:
        raise ApiError(
            status=409,
            code="endpoint_disabled",
            message="The endpoint is disabled; enable it (PATCH enabled=true) before resending.",
        )
    return int(
        WebhookDelivery.objects.filter(
            endpoint=endpoint, status=WebhookDelivery.FAILED, created_at__gte=since
        ).update(
            status=WebhookDelivery.PENDING, round_attempts=0, next_attempt_at=timezone.now(), finished_at=None
        )
    )


def endpoint_disable(*, endpoint_id: int, reason: str, message: str) -> bool:
    """Disable an endpoint the deliveries found gone or failing: announce `webhook.disabled`, email the org's
    admins. A REST hook answered 410 is unsubscribed (deleted). Returns False if it was already disabled."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.unscoped().select_for_update().filter(pk=endpoint_id).first()
        if endpoint is None or not endpoint.enabled:
            return False
        now = timezone.now()
        failing_since = endpoint.failing_since
        data = {
            "endpoint_id": endpoint.pk,
            "url": redact_url(endpoint.url),
            "reason": reason,
            "message": message,
            "failing_since": _timestamp(failing_since) if failing_since else None,
        }
        if reason == WebhookEndpoint.DISABLED_GONE and endpoint.kind == WebhookEndpoint.KIND_REST_HOOK:
            endpoint.delete()
        else:
            endpoint.enabled = False
            endpoint.disabled_reason = reason
            endpoint.disabled_at = now
            endpoint.updated_at = now
            endpoint.save(update_fields=["enabled", "disabled_reason", "disabled_at", "updated_at"])
            WebhookDelivery.objects.unscoped().filter(
                endpoint_id=endpoint_id, status=WebhookDelivery.PENDING
            ).update(status=WebhookDelivery.FAILED, finished_at=now, next_attempt_at=None)
        publish(type="webhook.disabled", org_id=endpoint.org_id, subject=f"webhooks/{endpoint_id}", data=data)
        org_id = endpoint.org_id
        transaction.on_commit(lambda: _email_admins(org_id=org_id, data=data))
    log.warning("webhook endpoint disabled", extra={"endpoint_id": endpoint_id, "reason": reason})
    return True


def _email_admins(*, org_id: int, data: Mapping[str, Any]) -> None:
    recipients = list(
        Membership.objects.filter(org_id=org_id, role__in=[Role.ADMIN, Role.OWNER])
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )
    if not recipients:
        return
    try:
        send_mail(
            subject=f"Arbiter disabled the webhook endpoint {data['url']}",
            message=f"{data['message']}\n\nEndpoint {data['endpoint_id']}: {data['url']}\n"
            "Fix the receiver, then enable the endpoint again in the console (Webhooks) or with "
            'PATCH .../webhooks/{id} {"enabled": true}; failed deliveries can then be resent.',
            from_email=None,
            recipient_list=recipients,
        )
    except Exception:  # noqa: BLE001 - mail trouble must not undo the disabling (the event says it too)
        log.warning("could not email the org's admins about a disabled webhook", exc_info=True)
