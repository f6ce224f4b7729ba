"""The CloudEvents 1.0 envelope, in structured JSON mode, with the `orgid` and `traceparent` extensions.

`Event` is what Arbiter's code passes around; the CloudEvents SDK validates the attributes and writes and
reads the JSON (the structured mode of the Kafka binding: the whole event is the message value).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.spec import SPECVERSION_V1_0
from cloudevents.core.v1.event import CloudEvent

SPEC_VERSION = SPECVERSION_V1_0
CONTENT_TYPE = JSONFormat.CONTENT_TYPE
DATA_CONTENT_TYPE = "application/json"
ORG_ID = "orgid"
TRACEPARENT = "traceparent"

_FORMAT = JSONFormat()


class EnvelopeError(ValueError):
    pass


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

    def to_cloudevent(self) -> CloudEvent:
        attributes: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": DATA_CONTENT_TYPE,
            ORG_ID: str(self.org_id),
        }
        if self.subject:
            attributes["subject"] = self.subject
        if self.dataschema:
            attributes["dataschema"] = self.dataschema
        if self.traceparent:
            attributes[TRACEPARENT] = self.traceparent
        return CloudEvent(attributes, self.data)

    def to_json(self) -> bytes:
        """The structured-mode JSON bytes (as stored in the outbox and sent to Kafka)."""
        return _FORMAT.write(self.to_cloudevent())

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.to_json())
        return body

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> Event:
        raw_org = event.get_extension(ORG_ID)
        try:
            org_id = int(raw_org)
        except (TypeError, ValueError):
            org_id = 0
        if org_id < 1:
            raise EnvelopeError(
                f"the event lacks its org: the `{ORG_ID}` extension must be an org id, got {raw_org!r}"
            )
        data = event.get_data()
        if not isinstance(data, dict):
            raise EnvelopeError("the event's data must be a JSON object")
        traceparent = event.get_extension(TRACEPARENT)
        return cls(
            id=event.get_id(),
            type=event.get_type(),
            source=event.get_source(),
            subject=event.get_subject() or "",
            org_id=org_id,
            data=data,
            time=event.get_time() or datetime.now(UTC),
            traceparent=traceparent if isinstance(traceparent, str) else None,
            dataschema=event.get_dataschema(),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        if raw.lstrip()[:1] not in (b"{", "{"):
            raise EnvelopeError("the message is not a JSON object")
        try:
            event = _FORMAT.read(CloudEvent, raw)
        except json.JSONDecodeError as exc:
            raise EnvelopeError(f"the message is not JSON: {exc}") from None
        except UnicodeDecodeError:
            raise EnvelopeError("the message is not UTF-8 text") from None
        except CloudEventValidationError as exc:
            # The SDK lists every rule an attribute breaks; the first says what is wrong.
            problems = "; ".join(str(errors[0]) for errors in exc.errors.values() if errors)
            raise EnvelopeError(f"not a valid CloudEvents {SPEC_VERSION} event ({problems})") from None
        except (ValueError, TypeError, OverflowError):
            raise EnvelopeError("time must be an RFC 3339 timestamp") from None
        if not isinstance(event, CloudEvent):
            raise EnvelopeError(f"not a CloudEvents {SPEC_VERSION} event")
        return cls.from_cloudevent(event)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Event:
        return cls.from_json(json.dumps(body))
