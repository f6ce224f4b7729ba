"""The CloudEvents envelope: the wire format other tools read, and clear reasons for messages it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from arbiter.events.envelope import CONTENT_TYPE, EnvelopeError, Event

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _event(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "type": "dataset.snapshot.created",
        "source": "/arbiter/dataset",
        "subject": "snapshots/9",
        "org_id": 12,
        "data": {"snapshot": 9, "text": "naïve ✓"},
        "time": datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=UTC),
        "traceparent": TRACEPARENT,
        "dataschema": "https://arbiter.example/schemas/dataset.snapshot.created.json",
        **overrides,
    }
    return Event(**fields)  # type: ignore[arg-type]


def test_the_wire_format_is_structured_json_with_the_org_and_trace_extensions() -> None:
    event = _event()
    body = json.loads(event.to_json())
    assert body == {
        "specversion": "1.0",
        "id": event.id,
        "source": "/arbiter/dataset",
        "type": "dataset.snapshot.created",
        "time": "2026-03-01T12:30:15.250000Z",
        "subject": "snapshots/9",
        "datacontenttype": "application/json",
        "dataschema": "https://arbiter.example/schemas/dataset.snapshot.created.json",
        "orgid": "12",
        "traceparent": TRACEPARENT,
        "data": {"snapshot": 9, "text": "naïve ✓"},
    }
    assert CONTENT_TYPE == "application/cloudevents+json"


def test_round_trip_and_a_reader_not_written_here_agree() -> None:
    event = _event()
    assert Event.from_json(event.to_json()) == event
    assert Event.from_dict(event.to_dict()) == event
    outside = from_structured(
        KafkaMessage(headers={}, key=b"12", value=event.to_json()), JSONFormat(), CloudEvent
    )
    assert outside.get_extension("orgid") == "12" and outside.get_data() == event.data


def test_optional_attributes_may_be_absent() -> None:
    event = _event(subject="", traceparent=None, dataschema=None)
    body = json.loads(event.to_json())
    assert not {"subject", "traceparent", "dataschema"} & set(body)
    assert Event.from_json(event.to_json()) == event


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda body: b"not json at all", "not a JSON object"),
        (lambda body: b"[1, 2]", "not a JSON object"),
        (lambda body: b'{"id": ', "not JSON"),
        (lambda body: b'{"bad": "\xff"}', "not UTF-8"),
        (lambda body: {**body, "specversion": "0.3"}, "'specversion' must be '1.0'"),
        (
            lambda body: {k: v for k, v in body.items() if k != "source"},
            "Missing required attribute: 'source'",
        ),
        (lambda body: {**body, "id": ""}, "'id' must not be None or empty"),
        (lambda body: {k: v for k, v in body.items() if k != "orgid"}, "lacks its org"),
        (lambda body: {**body, "orgid": "acme"}, "lacks its org"),
        (lambda body: {**body, "orgid": "0"}, "lacks its org"),
        (lambda body: {**body, "data": "text"}, "data must be a JSON object"),
        (lambda body: {k: v for k, v in body.items() if k != "data"}, "data must be a JSON object"),
        (lambda body: {**body, "time": "yesterday"}, "RFC 3339"),
        (lambda body: {**body, "time": 12}, "RFC 3339"),
    ],
)
def test_messages_that_are_not_arbiter_events_are_refused_with_the_reason(change, reason: str) -> None:
    changed = change(json.loads(_event().to_json()))
    raw = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
    with pytest.raises(EnvelopeError, match=reason.replace("(", r"\(")) as error:
        Event.from_json(raw)
    assert isinstance(error.value, ValueError)
