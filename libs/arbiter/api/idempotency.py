"""`Idempotency-Key` for mutating POSTs: a retry with the same key returns the first result and does nothing twice.

A pending record is inserted before the handler runs (a concurrent duplicate hits the unique constraint and gets a
409), and the answer is stored when the handler finishes. A key reused with a different body is a 422. Server
errors are not stored, so a retry after a 5xx really retries.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from arbiter.api.errors import ApiError
from arbiter.api.models import IdempotencyRecord

HEADER = "Idempotency-Key"
RETENTION = timedelta(hours=24)


class IdempotentReplay(Exception):
    def __init__(self, record: IdempotencyRecord) -> None:
        self.record = record


def _fingerprint(request: Request) -> str:
    content_type = request.content_type or ""
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    if content_type.startswith("multipart/") or length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        # Uploads may be large: their size and type identify a retry well enough without reading them twice.
        basis = f"{request.method} {request.path} {content_type.split(';')[0]} {request.META.get('CONTENT_LENGTH', '')}"
        return hashlib.sha256(basis.encode()).hexdigest()
    return hashlib.sha256(f"{request.method} {request.path} ".encode() + request._request.body).hexdigest()


def idempotency_begin(*, request: Request, alias: str, org_id: int, actor: str) -> IdempotencyRecord | None:
    """Claim the key for this request, or raise `IdempotentReplay` / an ApiError when it was used before."""
    key = request.headers.get(HEADER)
    if request.method != "POST" or not key:
        return None
    if len(key) > 255:
        raise ApiError(status=400, code="invalid", message=f"{HEADER}: at most 255 characters.")
    fingerprint = _fingerprint(request)
    records = IdempotencyRecord.objects.using(alias)
    records.filter(created_at__lt=timezone.now() - RETENTION).delete()
    try:
        with transaction.atomic(using=alias):
            return records.create(
                org_id=org_id,
                actor=actor,
                key=key,
                method=request.method,
                path=request.path[:500],
                fingerprint=fingerprint,
            )
    except IntegrityError:
        existing = records.get(org_id=org_id, actor=actor, key=key)
    if existing.fingerprint != fingerprint:
        raise ApiError(
            status=422,
            code="idempotency_key_reused",
            message=f"This {HEADER} was already used for a different request; use a new key.",
        )
    if existing.status_code is None:
        raise ApiError(
            status=409,
            code="idempotency_in_progress",
            message=f"A request with this {HEADER} is still being processed; retry shortly.",
        )
    raise IdempotentReplay(existing)


def idempotency_finish(
    *, record: IdempotencyRecord, alias: str, response: Response, redact: tuple[str, ...] = ()
) -> None:
    """Store the answer for replays; fields in `redact` (secrets shown once) are stored as null.

    Server errors are not stored (a retry really retries), nor are streamed files (exports: reading twice is
    harmless, and a replay could not give the file back).
    """
    if response.status_code >= 500 or not isinstance(response, Response):
        IdempotencyRecord.objects.using(alias).filter(pk=record.pk).delete()
        return
    # Stored as the client saw it (dates as strings, decimals as numbers), through the API's own renderer.
    body: Any = json.loads(JSONRenderer().render(response.data))
    if isinstance(body, dict) and redact:
        body = {name: (None if name in redact else value) for name, value in body.items()}
    IdempotencyRecord.objects.using(alias).filter(pk=record.pk).update(
        status_code=response.status_code, body=body
    )


def replay_response(record: IdempotencyRecord) -> Response:
    response = Response(record.body, status=record.status_code)
    response["Idempotent-Replayed"] = "true"
    return response
