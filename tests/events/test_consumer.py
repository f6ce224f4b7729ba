"""The consumer runner delivers each committed event to its handler once, in order per org, in the org's
scope and trace; it retries, dead-letters what cannot succeed, shares partitions within a group and resumes
from its committed offset."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
from django.db import transaction
from kafka import KafkaProducer, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from arbiter.events import publish
from arbiter.events.clients import consumer_create, producer_create
from arbiter.events.consumer import consumer_group
from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent, ProcessedEvent
from arbiter.events.testing import consumer_running, relay_outbox, wait_for
from arbiter.tenancy.scoping import current_org_id
from tests.events.helpers import read_topic

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "training", "inference"])


def _publish(type_name: str, *, org_id: int, n: int, data: dict | None = None) -> Event:
    with transaction.atomic(using="training"):
        return publish(type=type_name, org_id=org_id, subject=f"things/{n}", data=data or {"n": n})


def _applying(follow_up: str, seen: list[Event]) -> Callable[[Event], None]:
    """A handler whose visible effect is state in the consumer's database: a follow-up event in its outbox."""

    def handle(event: Event) -> None:
        seen.append(event)
        publish(type=follow_up, org_id=event.org_id, subject=event.subject, data={"n": event.data["n"]})

    return handle


def _applied(follow_up: str) -> list[int]:
    rows = OutboxEvent.objects.using("inference").filter(type=follow_up).order_by("id")
    return [row.body["data"]["n"] for row in rows]


def test_handler_runs_once_in_the_events_org_scope_and_trace(kafka_bootstrap: str, event_types) -> None:
    thing = event_types()
    seen: list[tuple[int | None, int, str]] = []

    def handle(event: Event) -> None:
        context = trace.get_current_span().get_span_context()
        seen.append((current_org_id(), context.trace_id, event.data["n"]))

    # A request being traced publishes the event: its consumer continues the same trace.
    incoming = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(incoming)):
        event = _publish(thing.type, org_id=42, n=5)
    assert event.traceparent == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)

    with consumer_running(
        consumer="tests-scope",
        alias="inference",
        handlers={thing.type: handle},
        bootstrap_servers=kafka_bootstrap,
    ):
        wait_for(lambda: ProcessedEvent.objects.using("inference").filter(event_id=event.id).exists())
    assert seen == [(42, 0xABC, 5)]
    assert current_org_id() is None


def test_a_duplicate_delivery_changes_state_once(kafka_bootstrap: str, event_types) -> None:
    thing = event_types()
    applied = event_types(producer="inference", consumers=())
    event = _publish(thing.type, org_id=3, n=1)
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    # The relay's at-least-once promise, exercised: the very same message sent twice more.
    [record] = read_topic(kafka_bootstrap, thing.topic, expected=1)
    producer = producer_create(bootstrap_servers=kafka_bootstrap)
    for _ in range(2):
        producer.send(thing.topic, key=record.key, value=record.value, headers=record.headers)
    producer.flush()
    producer.close()
    assert len(read_topic(kafka_bootstrap, thing.topic, expected=3)) == 3

    seen: list[Event] = []
    with consumer_running(
        consumer="tests-dupes",
        alias="inference",
        handlers={thing.type: _applying(applied.type, seen)},
        bootstrap_servers=kafka_bootstrap,
    ) as runner:
        wait_for(lambda: _committed(kafka_bootstrap, runner.group, thing.topic) == 3)
    assert [e.id for e in seen] == [event.id]
    assert _applied(applied.type) == [1]


def test_a_failing_handler_is_retried_and_its_partial_writes_roll_back(
    kafka_bootstrap: str, event_types
) -> None:
    thing = event_types()
    applied = event_types(producer="inference", consumers=())
    _publish(thing.type, org_id=3, n=1)
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    attempts: list[int] = []

    def flaky(event: Event) -> None:
        publish(type=applied.type, org_id=event.org_id, subject=event.subject, data={"n": event.data["n"]})
        attempts.append(event.data["n"])
        if len(attempts) < 3:
            raise ConnectionError("the model store hiccupped")

    with consumer_running(
        consumer="tests-flaky",
        alias="inference",
        handlers={thing.type: flaky},
        bootstrap_servers=kafka_bootstrap,
    ):
        wait_for(lambda: _applied(applied.type))
    assert attempts == [1, 1, 1]
    assert _applied(applied.type) == [1]


def test_a_poison_event_is_dead_lettered_after_n_tries_while_later_events_flow(
    kafka_bootstrap: str, event_types
) -> None:
    thing = event_types(partitions=1)
    applied = event_types(producer="inference", consumers=())
    events = [_publish(thing.type, org_id=9, n=n) for n in range(1, 6)]
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    tries: list[int] = []
    apply = _applying(applied.type, [])

    def handle(event: Event) -> None:
        tries.append(event.data["n"])
        # Writes first, then fails: its writes must vanish, while its neighbours' (same batch) stay.
        apply(event)
        if event.data["n"] == 2:
            raise ValueError("cannot parse the manifest")

    with consumer_running(
        consumer="tests-poison",
        alias="inference",
        handlers={thing.type: handle},
        bootstrap_servers=kafka_bootstrap,
        max_attempts=3,
    ):
        wait_for(lambda: len(_applied(applied.type)) == 4)
    assert _applied(applied.type) == [1, 3, 4, 5]
    assert tries == [1, 2, 2, 2, 3, 4, 5]

    [dead] = read_topic(kafka_bootstrap, thing.dead_letter_topic, expected=1)
    headers = {key: value.decode() for key, value in dead.headers}
    assert json.loads(dead.value)["id"] == events[1].id
    assert dead.key == b"9"
    assert headers["arbiter-dlq-reason"] == "handler-failed"
    assert headers["arbiter-dlq-attempts"] == "3"
    assert headers["arbiter-dlq-consumer"] == "tests-poison"
    assert headers["arbiter-dlq-topic"] == thing.topic
    assert "ValueError: cannot parse the manifest" in headers["arbiter-dlq-error"]
    assert headers["content-type"].startswith("application/cloudevents+json")


def test_bad_messages_are_dead_lettered_at_once_and_the_consumer_keeps_going(
    kafka_bootstrap: str, event_types
) -> None:
    thing = event_types(partitions=1)
    valid = json.loads(
        Event(type=thing.type, source="/elsewhere", subject="s", org_id=4, data={"n": 1}).to_json()
    )
    bad = {
        b"not json at all": "invalid-envelope",
        json.dumps({"hello": "world"}).encode(): "invalid-envelope",
        json.dumps({**valid, "type": "no.such.type"}).encode(): "unknown-type",
        json.dumps({k: v for k, v in valid.items() if k != "orgid"}).encode(): "invalid-envelope",
        json.dumps({**valid, "data": {"n": "one"}}).encode(): "schema",
    }
    producer: KafkaProducer = producer_create(bootstrap_servers=kafka_bootstrap)
    for value in bad:
        producer.send(thing.topic, key=b"4", value=value)
    producer.flush()
    producer.close()
    good = _publish(thing.type, org_id=4, n=2)
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    handled: list[str] = []

    with consumer_running(
        consumer="tests-bad",
        alias="inference",
        handlers={thing.type: lambda event: handled.append(event.id)},
        bootstrap_servers=kafka_bootstrap,
    ):
        wait_for(lambda: handled)
    assert handled == [good.id]
    dead = read_topic(kafka_bootstrap, thing.dead_letter_topic, expected=len(bad))
    assert [record.value for record in dead] == list(bad)
    assert [dict(record.headers)["arbiter-dlq-reason"].decode() for record in dead] == list(bad.values())
    assert {dict(record.headers)["arbiter-dlq-attempts"] for record in dead} == {b"0"}


def test_two_instances_of_one_group_share_the_partitions(kafka_bootstrap: str, event_types) -> None:
    thing = event_types(partitions=4)
    handled_by: dict[str, str] = {}
    lock = threading.Lock()

    def handle(event: Event) -> None:
        with lock:
            assert event.id not in handled_by
            handled_by[event.id] = threading.current_thread().name

    handlers = {thing.type: handle}
    with (
        consumer_running(
            consumer="tests-group", alias="inference", handlers=handlers, bootstrap_servers=kafka_bootstrap
        ) as first,
        consumer_running(
            consumer="tests-group", alias="inference", handlers=handlers, bootstrap_servers=kafka_bootstrap
        ) as second,
    ):
        wait_for(lambda: first.assigned and second.assigned and len(first.assigned | second.assigned) == 4)
        assert not first.assigned & second.assigned
        events = [_publish(thing.type, org_id=org, n=n) for n in range(3) for org in range(1, 21)]
        relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
        wait_for(lambda: len(handled_by) == len(events))
    assert set(handled_by) == {e.id for e in events}
    assert len(set(handled_by.values())) == 2


def test_a_restarted_consumer_resumes_from_its_committed_offset(kafka_bootstrap: str, event_types) -> None:
    thing = event_types(partitions=1)
    handled: list[int] = []
    handlers = {thing.type: lambda event: handled.append(event.data["n"])}
    for n in (1, 2, 3):
        _publish(thing.type, org_id=5, n=n)
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    with consumer_running(
        consumer="tests-resume", alias="inference", handlers=handlers, bootstrap_servers=kafka_bootstrap
    ) as runner:
        wait_for(lambda: _committed(kafka_bootstrap, runner.group, thing.topic) == 3)
    for n in (4, 5):
        _publish(thing.type, org_id=5, n=n)
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    # Forget the processed ids: only the committed offset can now keep 1-3 from being handled again.
    ProcessedEvent.objects.using("inference").all().delete()
    with consumer_running(
        consumer="tests-resume", alias="inference", handlers=handlers, bootstrap_servers=kafka_bootstrap
    ) as runner:
        wait_for(lambda: _committed(kafka_bootstrap, runner.group, thing.topic) == 5)
    assert handled == [1, 2, 3, 4, 5]
    assert runner.group == consumer_group("tests-resume") == "arbiter.tests-resume"


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = consumer_create(bootstrap_servers=bootstrap, group_id=group)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions)
    finally:
        consumer.close()
