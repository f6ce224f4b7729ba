"""The CloudEvents 1.0 envelope, in structured JSON mode, with the `orgid` and `traceparent` extensions."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"


class EnvelopeError(ValueError):
    pass


def encode(body: dict[str, Any]) -> bytes:
    """The structured-mode JSON bytes of an event body (as stored in the outbox and sent to Kafka)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Event:
    type: str
    source: str
    subject: str
    org_id: int
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    traceparent: str | None = None
    dataschema: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "subject": self.subject,
            "datacontenttype": "application/json",
            "orgid": str(self.org_id),
            "data": self.data,
        }
        if self.dataschema:
            body["dataschema"] = self.dataschema
        if self.traceparent:
            body["traceparent"] = self.traceparent
        return body

    def to_json(self) -> bytes:
        return encode(self.to_dict())

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Event:
        if body.get("specversion") != SPEC_VERSION:
            raise EnvelopeError(
                f"not a CloudEvents {SPEC_VERSION} event (specversion={body.get('specversion')!r})"
            )
        missing = [name for name in ("id", "source", "type", "orgid") if not body.get(name)]
        if missing:
            raise EnvelopeError(f"the event lacks required attributes: {', '.join(missing)}")
        try:
            org_id = int(body["orgid"])
        except (TypeError, ValueError):
            org_id = 0
        if org_id < 1:
            raise EnvelopeError(f"orgid must be an org id, got {body['orgid']!r}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise EnvelopeError("the event's data must be a JSON object")
        raw_time = body.get("time")
        try:
            time = (
                datetime.fromisoformat(str(raw_time).replace("Z", "+00:00"))
                if raw_time
                else datetime.now(UTC)
            )
        except ValueError:
            raise EnvelopeError(f"time must be an RFC 3339 timestamp, got {raw_time!r}") from None
        return cls(
            id=str(body["id"]),
            type=str(body["type"]),
            source=str(body["source"]),
            subject=str(body.get("subject") or ""),
            org_id=org_id,
            data=data,
            time=time,
            traceparent=body.get("traceparent"),
            dataschema=body.get("dataschema"),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"the message is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise EnvelopeError("the message is not a JSON object")
        return cls.from_dict(body)
