"""Reading what actually reached the broker, the way an outside consumer would."""

from __future__ import annotations

import time

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from arbiter.events.clients import consumer_create


def read_topic(
    bootstrap_servers: str, topic: str, *, expected: int, timeout_s: float = 15.0, settle_s: float = 0.5
) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning: waits for `expected` records, then `settle_s` more for any
    extra one (duplicates or strays must show up in the assertions, not hide behind an early return)."""
    consumer = consumer_create(bootstrap_servers=bootstrap_servers, group_id=None)
    partitions = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    consumer.seek_to_beginning()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < (settle_until or deadline):
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
            if settle_until is None and len(records) >= expected:
                settle_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return records
