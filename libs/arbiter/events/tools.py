"""Operator tools behind `arbiter events`: follow the event stream, list and replay dead letters."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from arbiter.events.clients import consumer_create, producer_create
from arbiter.events.consumer import (
    DLQ_ATTEMPTS,
    DLQ_CONSUMER,
    DLQ_ERROR,
    DLQ_REASON,
    DLQ_TIME,
    DLQ_TOPIC,
    REPLAY_FOR,
)
from arbiter.events.registry import EVENT_TYPES, dead_letter_topic

# `dlq replay --all` remembers how far it got as this group's offsets on the dead-letter topics.
REPLAY_GROUP = "arbiter.dlq-replay"


def _assign_all(consumer: KafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    partitions = [
        TopicPartition(topic, partition)
        for topic in sorted(set(topics))
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(partitions)
    return partitions


def _read_to_end(consumer: KafkaConsumer, *, idle_s: float) -> list[ConsumerRecord]:
    # `end_offsets` can under-report on tansu, so the end is where polls stay empty for `idle_s`.
    records: list[ConsumerRecord] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle_s:
        batches = consumer.poll(timeout_ms=100)
        for batch in batches.values():
            records.extend(batch)
        if batches:
            quiet_since = time.monotonic()
    return records


def events_tail(
    *,
    bootstrap_servers: str,
    write: Callable[[dict[str, Any]], None],
    types: Sequence[str] = (),
    org_id: str | None = None,
    from_beginning: bool = False,
    limit: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Write each event (as its CloudEvent dict plus where it was read) until `stop` or `limit`."""
    stop = stop or threading.Event()
    selected = [EVENT_TYPES[name] for name in types] if types else list(EVENT_TYPES.values())
    consumer = consumer_create(bootstrap_servers=bootstrap_servers, group_id=None, client_id="arbiter-tail")
    started_ms = int(time.time() * 1000)
    written = 0
    try:
        partitions = _assign_all(consumer, {et.topic for et in selected})
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        wanted_types = {et.type for et in selected}
        while not stop.is_set() and (limit is None or written < limit):
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    # The end offset may be reported short (tansu), so older events can follow a seek to it.
                    if not from_beginning and record.timestamp < started_ms:
                        continue
                    try:
                        body = json.loads(record.value)
                    except (TypeError, ValueError):
                        continue
                    if not isinstance(body, dict) or body.get("type") not in wanted_types:
                        continue
                    if org_id is not None and str(body.get("orgid")) != org_id:
                        continue
                    write(
                        {
                            "topic": record.topic,
                            "partition": record.partition,
                            "offset": record.offset,
                            **body,
                        }
                    )
                    written += 1
                    if limit is not None and written >= limit:
                        return written
    finally:
        consumer.close()
    return written


@dataclass(frozen=True)
class DeadLetter:
    dlq_topic: str
    partition: int
    offset: int
    topic: str
    consumer: str
    reason: str
    error: str
    attempts: int
    dead_lettered_at: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_record(cls, record: ConsumerRecord) -> DeadLetter:
        headers = {key: (value or b"").decode(errors="replace") for key, value in record.headers or ()}
        return cls(
            dlq_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            topic=headers.get(DLQ_TOPIC, record.topic.removesuffix(".dlq")),
            consumer=headers.get(DLQ_CONSUMER, ""),
            reason=headers.get(DLQ_REASON, ""),
            error=headers.get(DLQ_ERROR, ""),
            attempts=int(headers.get(DLQ_ATTEMPTS, "0") or 0),
            dead_lettered_at=headers.get(DLQ_TIME, ""),
            key=record.key,
            value=record.value,
            headers=tuple((key, value) for key, value in record.headers or ()),
        )

    @property
    def event(self) -> dict[str, Any]:
        """The dead event's CloudEvent attributes, as far as its bytes can be read."""
        try:
            body = json.loads(self.value or b"")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def summary(self) -> dict[str, Any]:
        return {
            "dlq": f"{self.dlq_topic}/{self.partition}@{self.offset}",
            "event_id": self.event.get("id"),
            "type": self.event.get("type"),
            "orgid": self.event.get("orgid"),
            "topic": self.topic,
            "consumer": self.consumer,
            "reason": self.reason,
            "attempts": self.attempts,
            "error": self.error,
            "dead_lettered_at": self.dead_lettered_at,
        }


def dlq_topics(topics: Iterable[str] | None = None) -> list[str]:
    domain = set(topics) if topics else {et.topic for et in EVENT_TYPES.values()}
    return sorted(dead_letter_topic(topic) for topic in domain)


def dead_letters_list(
    *,
    bootstrap_servers: str,
    topics: Iterable[str] | None = None,
    unreplayed: bool = False,
    idle_s: float = 1.0,
) -> list[DeadLetter]:
    """Every dead letter of the given domain topics (default: all), oldest first per partition; with
    `unreplayed`, only those after the position `dead_letters_replay(..., remember=True)` reached."""
    consumer = consumer_create(
        bootstrap_servers=bootstrap_servers, group_id=REPLAY_GROUP, client_id="arbiter-dlq"
    )
    try:
        partitions = _assign_all(consumer, dlq_topics(topics))
        for partition in partitions:
            committed = consumer.committed(partition) if unreplayed else None
            if committed is None:
                consumer.seek_to_beginning(partition)
            else:
                consumer.seek(partition, committed)
        return [DeadLetter.from_record(record) for record in _read_to_end(consumer, idle_s=idle_s)]
    finally:
        consumer.close()


def dead_letters_replay(
    *, bootstrap_servers: str, letters: Sequence[DeadLetter], remember: bool = False
) -> int:
    """Send each dead event back to its topic, for the one consumer that failed it (the others skip it).

    With `remember`, record the replayed positions so `dead_letters_list(unreplayed=True)` starts after them.
    """
    if not letters:
        return 0
    producer = producer_create(bootstrap_servers=bootstrap_servers, client_id="arbiter-dlq-replay")
    try:
        futures = []
        for letter in letters:
            headers = [(key, value) for key, value in letter.headers if not key.startswith("arbiter-")]
            if letter.consumer:
                headers.append((REPLAY_FOR, letter.consumer.encode()))
            futures.append(producer.send(letter.topic, key=letter.key, value=letter.value, headers=headers))
        for future in futures:
            # Raises if the broker did not take it: then nothing is remembered and the replay can be re-run.
            future.get(timeout=30)
    finally:
        producer.close(timeout=5)
    if remember:
        positions: dict[TopicPartition, OffsetAndMetadata] = {}
        for letter in letters:
            partition = TopicPartition(letter.dlq_topic, letter.partition)
            current = positions.get(partition)
            if current is None or current.offset <= letter.offset:
                positions[partition] = OffsetAndMetadata(letter.offset + 1, "", -1)
        consumer = consumer_create(bootstrap_servers=bootstrap_servers, group_id=REPLAY_GROUP)
        try:
            consumer.commit(positions)
        finally:
            consumer.close()
    return len(letters)
