"""A client not written here reads Arbiter's events from the broker and decodes them as valid CloudEvents."""

from __future__ import annotations

import time

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer
from django.db import transaction

from arbiter.events import publish
from arbiter.events.testing import relay_outbox

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "training"])


def test_a_confluent_kafka_consumer_decodes_arbiters_events_as_cloudevents(
    kafka_bootstrap: str, event_types
) -> None:
    thing = event_types()
    with transaction.atomic(using="training"):
        published = publish(type=thing.type, org_id=12, subject="things/3", data={"n": 3})
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": "outside-tool",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
        }
    )
    consumer.subscribe([thing.topic])
    try:
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            candidate = consumer.poll(0.5)
            if candidate is not None and candidate.error() is None:
                message = candidate
    finally:
        consumer.close()
    assert message is not None, "the confluent-kafka consumer received nothing"

    event = from_kafka(
        KafkaMessage(headers=dict(message.headers() or []), key=message.key(), value=message.value()),
        JSONFormat(),
        CloudEvent,
    )
    assert event.get_specversion() == "1.0"
    assert event.get_id() == published.id
    assert event.get_type() == thing.type
    assert event.get_source() == "/arbiter/training"
    assert event.get_subject() == "things/3"
    assert event.get_time() is not None and event.get_time().tzinfo is not None
    assert event.get_datacontenttype() == "application/json"
    assert event.get_dataschema() == thing.schema["$id"]
    assert event.get_extension("orgid") == "12"
    assert event.get_extension("traceparent") == published.traceparent
    assert event.get_data() == {"n": 3}
