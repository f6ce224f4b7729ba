"""The relay survives the broker being down: it keeps what it could not send, retries, then catches up."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import transaction

from arbiter.events import publish
from arbiter.events.broker import EmbeddedBroker, topics_ensure
from arbiter.events.models import OutboxEvent
from arbiter.events.relay import OutboxRelay, RelayConfig
from arbiter.events.testing import wait_for
from tests.events.helpers import read_topic

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "training"])


def _unsent() -> int:
    return OutboxEvent.objects.using("training").filter(sent_at__isnull=True).count()


def test_events_published_while_the_broker_is_down_arrive_in_order_once_it_is_back(event_types) -> None:
    thing = event_types()
    broker = EmbeddedBroker()
    broker.start()
    stop = threading.Event()
    relay = OutboxRelay(
        alias="training",
        bootstrap_servers=broker.bootstrap_servers,
        config=RelayConfig(ack_timeout_s=0.3, backoff_max_s=0.3),
    )
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    try:
        topics_ensure(bootstrap_servers=broker.bootstrap_servers, topics=[thing.topic])
        thread.start()
        with transaction.atomic(using="training"):
            publish(type=thing.type, org_id=1, subject="things/0", data={"n": 0})
        wait_for(lambda: _unsent() == 0)

        broker.kill()
        during = []
        for n in range(1, 11):
            with transaction.atomic(using="training"):
                during.append(
                    publish(type=thing.type, org_id=1 + n % 2, subject=f"things/{n}", data={"n": n})
                )
        time.sleep(1.0)
        assert _unsent() == len(during), "nothing can be marked sent while no broker acknowledges it"

        broker.start()
        topics_ensure(bootstrap_servers=broker.bootstrap_servers, topics=[thing.topic])
        wait_for(lambda: _unsent() == 0)
        # The restarted broker keeps memory storage: it holds exactly what was sent after the outage began.
        records = read_topic(broker.bootstrap_servers, thing.topic, expected=len(during))
        first_seen: dict[str, int] = {}
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            first_seen.setdefault(json.loads(record.value)["id"], len(first_seen))
        assert set(first_seen) == {event.id for event in during}
        for org in (1, 2):
            mine = [event for event in during if event.org_id == org]
            assert sorted(mine, key=lambda event: first_seen[event.id]) == mine
    finally:
        stop.set()
        thread.join(timeout=10)
        broker.stop()
