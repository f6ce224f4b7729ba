"""The webhook delivery worker (`arbiter webhooks deliver`): makes the attempts of due deliveries.

State lives in the database, not in the worker: a delivery is due when `status` is pending and
`next_attempt_at` has passed. The worker claims due deliveries with `SELECT ... FOR UPDATE SKIP LOCKED` and
pushes their `next_attempt_at` forward by a lease (the attempt's time limit and a margin) before it sends, so
several workers share the work, and a worker killed mid-attempt leaves its deliveries to be attempted again
when the lease runs out: at least once, with the same `webhook-id`.

Each attempt is signed with the `standardwebhooks` library (`webhook-id`, `webhook-timestamp` = the attempt's
time, `webhook-signature`, one `v1,` signature per live secret) and sent through the egress guard, which
refuses private addresses and never follows redirects. 2xx succeeds; 410 disables the endpoint; network errors,
429 (honouring `Retry-After`) and 5xx are retried on `ARBITER_WEBHOOK_RETRY_SCHEDULE`; anything else fails the
delivery. An endpoint failing for `ARBITER_WEBHOOK_DISABLE_AFTER_SECONDS` is disabled.

Attempts run in a shared thread pool (`ARBITER_WEBHOOK_WORKERS`) with at most
`ARBITER_WEBHOOK_ENDPOINT_CONCURRENCY` in flight per endpoint, so one slow endpoint never holds up the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.utils import timezone
from standardwebhooks import Webhook

from arbiter.config.typed_settings import WebhookSettings, arbiter_settings
from arbiter.egress import (
    EgressFailed,
    EgressPolicy,
    EgressRefused,
    EgressResponse,
    egress_request,
    redact_url,
)
from services.gateway import logic
from services.gateway.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

USER_AGENT = "Arbiter-Webhooks/1"
RESPONSE_KEEP_BYTES = 2048
LEASE_MARGIN_S = 5.0


def signed_headers(*, message_id: str, secrets: list[str], body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (one signature per live secret, space-separated)."""
    signatures = " ".join(
        Webhook(secret).sign(msg_id=message_id, timestamp=at, data=body) for secret in secrets
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # WebhookAttempt.SUCCEEDED / FAILED / REFUSED
    status_code: int | None
    latency_ms: float | None
    response_body: str
    error: str
    retry: bool
    retry_after_s: float | None = None
    gone: bool = False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - timezone.now()).total_seconds())


def _classify(response: EgressResponse) -> AttemptResult:
    text = response.body[:RESPONSE_KEEP_BYTES].decode("utf-8", errors="replace")
    status = response.status

    def failed(
        error: str, *, retry: bool, retry_after_s: float | None = None, gone: bool = False
    ) -> AttemptResult:
        return AttemptResult(
            WebhookAttempt.FAILED, status, response.elapsed_ms, text, error, retry, retry_after_s, gone
        )

    if 200 <= status < 300:
        return AttemptResult(WebhookAttempt.SUCCEEDED, status, response.elapsed_ms, text, "", retry=False)
    if status == 410:
        return failed("410 Gone", retry=False, gone=True)
    if status == 429:
        return failed(
            "429 Too Many Requests",
            retry=True,
            retry_after_s=_retry_after(response.headers.get("retry-after")),
        )
    if status >= 500:
        return failed(f"{status} server error", retry=True)
    if 300 <= status < 400:
        return failed(f"{status} redirect: redirects are not followed", retry=False)
    return failed(f"{status} refused by the receiver", retry=False)


def attempt_send(
    delivery: WebhookDelivery, endpoint: WebhookEndpoint, *, policy: EgressPolicy, timeout_s: float
) -> AttemptResult:
    at = timezone.now()
    headers = signed_headers(
        message_id=delivery.message_id, secrets=endpoint.signing_secrets(now=at), body=delivery.body, at=at
    )
    try:
        response = egress_request(
            "POST",
            endpoint.url,
            policy=policy,
            body=delivery.body.encode(),
            headers=headers,
            timeout_s=timeout_s,
            max_body_bytes=RESPONSE_KEEP_BYTES,
        )
    except EgressRefused as refused:
        return AttemptResult(WebhookAttempt.REFUSED, None, None, "", f"refused: {refused}"[:500], retry=False)
    except EgressFailed as failed:
        return AttemptResult(WebhookAttempt.FAILED, None, None, "", str(failed)[:500], retry=True)
    return _classify(response)


def attempt_record(
    *, delivery_id: int, result: AttemptResult, started_at: datetime, settings: WebhookSettings
) -> None:
    """Record an attempt and decide what comes next for the delivery and its endpoint."""
    now = timezone.now()
    disable: tuple[int, str, str] | None = None
    with transaction.atomic():
        delivery = WebhookDelivery.objects.unscoped().select_for_update().filter(pk=delivery_id).first()
        if delivery is None:  # the endpoint was deleted meanwhile
            return
        attempt = WebhookAttempt(
            delivery=delivery,
            number=delivery.attempts + 1,
            outcome=result.outcome,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            response_body=result.response_body,
            error=result.error,
            started_at=started_at,
        )
        attempt.org_id = delivery.org_id
        attempt.save()
        delivery.attempts += 1
        delivery.round_attempts += 1
        delivery.last_error = result.error
        delivery.last_status_code = result.status_code
        schedule = settings.retry_schedule
        if result.outcome == WebhookAttempt.SUCCEEDED:
            delivery.status, delivery.finished_at, delivery.next_attempt_at = (
                WebhookDelivery.SUCCEEDED,
                now,
                None,
            )
            WebhookEndpoint.objects.unscoped().filter(
                pk=delivery.endpoint_id, failing_since__isnull=False
            ).update(failing_since=None)
        else:
            if result.retry and delivery.round_attempts < len(schedule):
                delay = schedule[delivery.round_attempts]
                if result.retry_after_s is not None:
                    delay = max(delay, result.retry_after_s)
                delivery.next_attempt_at = now + timedelta(seconds=delay)
            else:
                delivery.status, delivery.finished_at, delivery.next_attempt_at = (
                    WebhookDelivery.FAILED,
                    now,
                    None,
                )
            WebhookEndpoint.objects.unscoped().filter(
                pk=delivery.endpoint_id, failing_since__isnull=True
            ).update(failing_since=now)
            endpoint = (
                WebhookEndpoint.objects.unscoped()
                .only("failing_since", "enabled")
                .get(pk=delivery.endpoint_id)
            )
            if result.gone:
                disable = (
                    delivery.endpoint_id,
                    WebhookEndpoint.DISABLED_GONE,
                    "The endpoint answered 410 Gone; it is disabled and receives nothing more.",
                )
            elif (
                endpoint.enabled
                and endpoint.failing_since is not None
                and (now - endpoint.failing_since).total_seconds() >= settings.disable_after_s
            ):
                disable = (
                    delivery.endpoint_id,
                    WebhookEndpoint.DISABLED_FAILING,
                    f"Every delivery failed since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC; the endpoint is "
                    "disabled. Fix the receiver, enable it again, and resend what failed.",
                )
        delivery.save(
            update_fields=[
                "attempts",
                "round_attempts",
                "last_error",
                "last_status_code",
                "status",
                "finished_at",
                "next_attempt_at",
            ]
        )
    if disable is not None:
        logic.endpoint_disable(endpoint_id=disable[0], reason=disable[1], message=disable[2])


def attempt_due(*, delivery_id: int, policy: EgressPolicy, settings: WebhookSettings) -> str | None:
    """Make one attempt of a claimed delivery; returns its outcome (None: nothing to do any more)."""
    delivery = WebhookDelivery.objects.unscoped().select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.PENDING:
        return None
    endpoint = delivery.endpoint
    if not endpoint.enabled:
        WebhookDelivery.objects.unscoped().filter(pk=delivery_id, status=WebhookDelivery.PENDING).update(
            status=WebhookDelivery.FAILED,
            last_error="the endpoint is disabled",
            finished_at=timezone.now(),
            next_attempt_at=None,
        )
        return None
    started_at = timezone.now()
    result = attempt_send(delivery, endpoint, policy=policy, timeout_s=settings.timeout_s)
    log.info(
        "webhook attempt",
        extra={
            "delivery_id": delivery_id,
            "endpoint_id": endpoint.pk,
            "url": redact_url(endpoint.url),
            "outcome": result.outcome,
            "status_code": result.status_code,
        },
    )
    attempt_record(delivery_id=delivery_id, result=result, started_at=started_at, settings=settings)
    return result.outcome


def deliveries_claim(
    *, limit: int, busy: Counter[int], per_endpoint: int, lease_s: float
) -> list[tuple[int, int]]:
    """Claim up to `limit` due deliveries, at most `per_endpoint` in flight per endpoint (counting `busy`);
    returns (delivery id, endpoint id) pairs, their lease taken."""
    if limit <= 0:
        return []
    now = timezone.now()
    claimed: list[tuple[int, int]] = []
    taken = Counter(busy)
    with transaction.atomic():
        for _round in range(4):
            saturated = [endpoint_id for endpoint_id, n in taken.items() if n >= per_endpoint]
            rows = list(
                WebhookDelivery.objects.unscoped()
                .select_for_update(skip_locked=True)
                .filter(status=WebhookDelivery.PENDING, next_attempt_at__lte=now)
                .exclude(endpoint_id__in=saturated)
                .exclude(pk__in=[pk for pk, _ in claimed])
                .order_by("next_attempt_at", "pk")
                .values_list("pk", "endpoint_id")[: limit * 2]
            )
            skipped = False
            for pk, endpoint_id in rows:
                if len(claimed) >= limit:
                    break
                if taken[endpoint_id] >= per_endpoint:
                    skipped = True
                    continue
                taken[endpoint_id] += 1
                claimed.append((pk, endpoint_id))
            if len(claimed) >= limit or not skipped:
                break
        if claimed:
            WebhookDelivery.objects.unscoped().filter(pk__in=[pk for pk, _ in claimed]).update(
                next_attempt_at=now + timedelta(seconds=lease_s)
            )
    return claimed


class DeliveryWorker:
    """Claims due deliveries and attempts them in a shared pool; `run()` until `stop` is set."""

    def __init__(
        self, *, settings: WebhookSettings | None = None, policy: EgressPolicy | None = None
    ) -> None:
        self.settings = settings or arbiter_settings().webhooks
        self.policy = policy or logic.webhook_policy()
        self._threads_connections: list[Any] = []
        self.pool = self._pool()
        self._busy: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.lease_s = self.settings.timeout_s + LEASE_MARGIN_S

    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix="webhook", initializer=self._thread_started
        )

    def _thread_started(self) -> None:
        # Each pool thread keeps its database connection across attempts; `close()` closes them from here.
        for connection in connections.all():
            connection.inc_thread_sharing()
            with self._lock:
                self._threads_connections.append(connection)

    def close(self) -> None:
        """Wait for the attempts in flight, then close the pool threads' database connections."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            opened, self._threads_connections = self._threads_connections, []
        for connection in opened:
            connection.close()
            connection.dec_thread_sharing()
        self.pool = self._pool()

    def run(self, stop: threading.Event) -> None:
        log.info("webhook delivery worker started", extra={"workers": self.settings.workers})
        try:
            while not stop.is_set():
                try:
                    claimed = self.tick()
                except Exception:  # noqa: BLE001 - a database hiccup: wait and try again
                    log.warning("claiming deliveries failed; retrying", exc_info=True)
                    close_old_connections()
                    stop.wait(1.0)
                    continue
                if not claimed:
                    self._wake.wait(self.settings.poll_s)
                    self._wake.clear()
        finally:
            self.close()
            connections.close_all()
            log.info("webhook delivery worker stopped")

    def tick(self) -> int:
        """Claim what the pool has room for and start those attempts; returns how many."""
        with self._lock:
            free = self.settings.workers - sum(self._busy.values())
            busy = Counter(self._busy)
        claimed = deliveries_claim(
            limit=free, busy=busy, per_endpoint=self.settings.endpoint_concurrency, lease_s=self.lease_s
        )
        for delivery_id, endpoint_id in claimed:
            with self._lock:
                self._busy[endpoint_id] += 1
            self.pool.submit(self._attempt, delivery_id, endpoint_id)
        return len(claimed)

    def _attempt(self, delivery_id: int, endpoint_id: int) -> None:
        try:
            attempt_due(delivery_id=delivery_id, policy=self.policy, settings=self.settings)
        except Exception:  # noqa: BLE001 - the lease runs out and the delivery is attempted again
            log.exception("a webhook attempt failed unexpectedly", extra={"delivery_id": delivery_id})
        finally:
            close_old_connections()
            with self._lock:
                self._busy[endpoint_id] -= 1
                if self._busy[endpoint_id] <= 0:
                    del self._busy[endpoint_id]
            self._wake.set()

    def drain(self, *, timeout_s: float = 30.0) -> None:
        """Attempt everything due now and wait for those attempts (tests and `--once`)."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                claimed = self.tick()
                with self._lock:
                    idle = not self._busy
                if not claimed and idle:
                    return
                self._wake.wait(0.05)
                self._wake.clear()
        finally:
            self.close()
