"""`arbiter events`: tail the stream, see the outbox, list dead letters and replay them where they failed."""

from __future__ import annotations

import io
import json
import threading

import pytest
from django.core.management import call_command
from django.db import transaction

from arbiter.events import publish
from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.events.testing import consumer_running, relay_outbox, wait_for


def _publish(type_name: str, *, org_id: int, n: int) -> Event:
    with transaction.atomic(using="training"):
        return publish(type=type_name, org_id=org_id, subject=f"things/{n}", data={"n": n})


def _events(*args: str) -> list[dict]:
    out = io.StringIO()
    call_command("events", *args, stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.django_db(transaction=True, databases=["default", "training", "inference"])
def test_a_dead_letter_is_listed_and_replayed_only_to_the_consumer_that_failed_it(
    kafka_bootstrap: str, event_types
) -> None:
    thing = event_types(consumers=("inference",))
    event = _publish(thing.type, org_id=8, n=1)
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    broken = True
    fixed_calls: list[str] = []
    other_calls: list[str] = []

    def handle(event: Event) -> None:
        if broken:
            raise KeyError("label 'spam' is not in the schema")
        fixed_calls.append(event.id)

    with (
        consumer_running(
            consumer="tests-replay-a",
            alias="inference",
            handlers={thing.type: handle},
            bootstrap_servers=kafka_bootstrap,
            max_attempts=2,
        ),
        consumer_running(
            consumer="tests-replay-b",
            alias="inference",
            handlers={thing.type: lambda e: other_calls.append(e.id)},
            bootstrap_servers=kafka_bootstrap,
        ),
    ):
        wait_for(lambda: other_calls and _events("dlq", "list", "--topic", thing.topic))
        [letter] = _events("dlq", "list", "--topic", thing.topic)
        assert letter["event_id"] == event.id
        assert letter["type"] == thing.type
        assert letter["orgid"] == "8"
        assert letter["consumer"] == "tests-replay-a"
        assert letter["reason"] == "handler-failed"
        assert letter["attempts"] == 2
        assert "label 'spam' is not in the schema" in letter["error"]

        broken = False
        out = io.StringIO()
        call_command("events", "dlq", "replay", "--id", event.id, "--topic", thing.topic, stdout=out)
        assert "replayed 1 event" in out.getvalue()
        wait_for(lambda: fixed_calls)
        assert fixed_calls == [event.id]
        assert other_calls == [event.id]

        # `--all` replays what it has not replayed before, once.
        out = io.StringIO()
        call_command("events", "dlq", "replay", "--all", "--topic", thing.topic, stdout=out)
        assert "replayed 1 event" in out.getvalue()
        out = io.StringIO()
        call_command("events", "dlq", "replay", "--all", "--topic", thing.topic, stdout=out)
        assert "replayed 0 event" in out.getvalue()
        wait_for(lambda: _events("dlq", "list", "--topic", thing.topic, "--unreplayed") == [])
    assert fixed_calls == [event.id]
    assert other_calls == [event.id]


@pytest.mark.django_db(transaction=True, databases=["default", "training"])
def test_tail_prints_the_events_of_one_org(kafka_bootstrap: str, event_types) -> None:
    thing = event_types()
    earlier = _publish(thing.type, org_id=1, n=0)
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    printed = _events("tail", "--type", thing.type, "--org", "1", "--from-beginning", "--limit", "1")
    assert [(line["id"], line["orgid"], line["data"]) for line in printed] == [(earlier.id, "1", {"n": 0})]

    # Without --from-beginning, only what arrives after the tail started.
    out = io.StringIO()
    tail = threading.Thread(
        target=call_command,
        args=("events", "tail", "--type", thing.type, "--org", "1", "--limit", "1"),
        kwargs={"stdout": out},
    )
    tail.start()
    later: list[Event] = []

    def publish_until_tailed() -> bool:
        _publish(thing.type, org_id=2, n=1)
        later.append(_publish(thing.type, org_id=1, n=len(later) + 1))
        relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
        tail.join(timeout=0.3)
        return not tail.is_alive()

    wait_for(publish_until_tailed)
    [line] = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["id"] in {event.id for event in later}
    assert line["orgid"] == "1"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_outbox_shows_unsent_events_per_service(kafka_bootstrap: str, event_types) -> None:
    thing = event_types()
    _publish(thing.type, org_id=1, n=1)
    status = {line["service"]: line for line in _events("outbox")}
    assert status["training"]["unsent"] == 1
    assert status["training"]["oldest_unsent"]
    assert status["dataset"]["unsent"] == 0
    relay_outbox(alias="training", bootstrap_servers=kafka_bootstrap)
    assert {line["service"]: line["unsent"] for line in _events("outbox")}["training"] == 0
    assert OutboxEvent.objects.using("training").get().sent_at is not None
