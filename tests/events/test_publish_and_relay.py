"""Publishing writes to the producer's outbox inside its transaction; the relay sends what committed."""

from __future__ import annotations

import json
import threading

import pytest
from django.db import connections, transaction

from arbiter.events import PublishError, publish
from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import EventSchemaError, UnknownEventType
from arbiter.events.relay import OutboxRelay, RelayConfig
from arbiter.events.testing import relay_outbox
from tests.events.helpers import read_topic

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "training"])


def _publish(type_name: str, *, org_id: int, n: int) -> Event:
    with transaction.atomic(using="training"):
        return publish(type=type_name, org_id=org_id, subject=f"things/{n}", data={"n": n})


def test_only_committed_events_reach_the_broker(kafka_bootstrap: str, event_types) -> None:
    thing = event_types()
    committed = _publish(thing.type, org_id=7, n=1)
    with pytest.raises(RuntimeError, match="boom"), transaction.atomic(using="training"):
        publish(type=thing.type, org_id=7, subject="things/2", data={"n": 2})
        raise RuntimeError("boom")

    assert list(OutboxEvent.objects.using("training").values_list("event_id", flat=True)) == [committed.id]
    assert relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap) == 1
    [record] = read_topic(kafka_bootstrap, thing.topic, expected=1)
    assert record.key == b"7"
    assert dict(record.headers)["content-type"].startswith(b"application/cloudevents+json")
    body = json.loads(record.value)
    assert body["id"] == committed.id
    assert body["type"] == thing.type
    assert body["orgid"] == "7"
    assert body["data"] == {"n": 1}
    assert body["source"] == "/arbiter/training"
    assert body["traceparent"].startswith("00-")
    # Sent rows are marked, so a restarted relay does not send them again.
    assert relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap) == 0


def test_publish_outside_a_transaction_is_refused(event_types) -> None:
    thing = event_types()
    with pytest.raises(PublishError, match="transaction.atomic"):
        publish(type=thing.type, org_id=1, subject="things/1", data={"n": 1})
    assert not OutboxEvent.objects.using("training").exists()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"data": {"n": "one"}}, EventSchemaError),
        ({"data": {}}, EventSchemaError),
        ({"org_id": 0}, PublishError),
        ({"org_id": None}, PublishError),
        ({"type": "no.such.type"}, UnknownEventType),
    ],
)
def test_bad_events_are_rejected_at_publish(event_types, kwargs: dict, error: type[Exception]) -> None:
    thing = event_types()
    arguments = {"type": thing.type, "org_id": 3, "subject": "things/1", "data": {"n": 1}, **kwargs}
    with pytest.raises(error), transaction.atomic(using="training"):
        publish(**arguments)
    assert not OutboxEvent.objects.using("training").exists()


def test_each_orgs_events_arrive_in_publish_order_on_one_partition(kafka_bootstrap: str, event_types) -> None:
    thing = event_types(partitions=3)
    published = [_publish(thing.type, org_id=org, n=n) for n in range(40) for org in (11, 12, 13, 14)]
    assert relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap) == len(published)

    records = read_topic(kafka_bootstrap, thing.topic, expected=len(published))
    assert sorted(json.loads(r.value)["id"] for r in records) == sorted(e.id for e in published)
    for org in (11, 12, 13, 14):
        mine = [r for r in records if r.key == str(org).encode()]
        assert len({r.partition for r in mine}) == 1
        mine.sort(key=lambda r: r.offset)
        assert [json.loads(r.value)["data"]["n"] for r in mine] == list(range(40))


def test_two_relays_on_one_database_share_the_work_and_keep_each_orgs_order(
    kafka_bootstrap: str, event_types
) -> None:
    thing = event_types()
    published = [_publish(thing.type, org_id=org, n=n) for n in range(60) for org in (21, 22, 23, 24, 25)]
    sent_by: dict[str, int] = {}

    def relay(name: str) -> None:
        # Small batches, so that the two relays interleave many times.
        relay = OutboxRelay(
            alias="training", bootstrap_servers=kafka_bootstrap, config=RelayConfig(batch_size=7)
        )
        unsent = OutboxEvent.objects.using("training").filter(sent_at__isnull=True)
        try:
            # A batch may send nothing while the other relay holds earlier rows of the same orgs: keep going.
            while unsent.exists():
                sent_by[name] = sent_by.get(name, 0) + relay.relay_batch()
        finally:
            relay.close()
            connections.close_all()

    threads = [threading.Thread(target=relay, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not OutboxEvent.objects.using("training").filter(sent_at__isnull=True).exists()
    assert sum(sent_by.values()) == len(published)
    assert min(sent_by.values()) > 0, sent_by
    records = read_topic(kafka_bootstrap, thing.topic, expected=len(published))
    assert sorted(json.loads(r.value)["id"] for r in records) == sorted(e.id for e in published)
    for org in (21, 22, 23, 24, 25):
        mine = sorted((r for r in records if r.key == str(org).encode()), key=lambda r: r.offset)
        assert [json.loads(r.value)["data"]["n"] for r in mine] == list(range(60))
