"""Pytest fixtures and helpers for tests that need events to flow for real.

- `kafka_broker` (session): one embedded tansu broker, in memory, on a free loopback port.
- `kafka_bootstrap`: points the settings' KAFKA_BOOTSTRAP_SERVERS at it and returns the address.
- `event_types`: registers test-only event types (a JSON Schema written to a temporary directory, a topic of
  their own so tests never see each other's events) and removes them afterwards.
- `relay_outbox(...)` sends a service's committed outbox to the broker; `consumer_running(...)` runs an
  `EventConsumer` in a thread for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from arbiter.events.broker import DEFAULT_PARTITIONS, EmbeddedBroker, embedded_broker, topics_ensure

# Short group sessions: a join on tansu takes about half of the session timeout.
TEST_SESSION_TIMEOUT_MS = 2000

_instances = itertools.count(1)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A tansu broker on a free loopback port, in memory, for the session; stopped at the end."""
    from arbiter.events.registry import broker_topics

    log_path = tmp_path_factory.mktemp("kafka") / "broker.log"
    with embedded_broker(
        storage="memory://tansu/", log_path=log_path, topics=broker_topics(), partitions=DEFAULT_PARTITIONS
    ) as broker:
        yield broker


@pytest.fixture
def kafka_bootstrap(kafka_broker: EmbeddedBroker, override_arbiter_settings: Callable[..., Any]) -> str:
    override_arbiter_settings(KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap_servers)
    return kafka_broker.bootstrap_servers


EventTypeFactory = Callable[..., Any]


@pytest.fixture
def event_types(kafka_broker: EmbeddedBroker, tmp_path: Path) -> Iterator[EventTypeFactory]:
    """`event_types(producer="training", consumers=("inference",), schema=None, partitions=4)` registers a
    fresh event type `test.<hex>.happened` on its own topic `test.<hex>` (and its dead-letter topic).
    The default schema requires an integer `n`."""
    from arbiter.events.registry import EVENT_TYPES, EventType

    registered: list[str] = []

    def create(
        *,
        producer: str = "training",
        consumers: tuple[str, ...] = ("inference",),
        schema: Mapping[str, Any] | None = None,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> EventType:
        name = uuid.uuid4().hex[:12]
        type_name = f"test.{name}.happened"
        body = dict(
            schema
            or {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "required": ["n"],
                "examples": [{"n": 1}],
            }
        )
        body.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        body.setdefault("$id", f"https://arbiter.test/schemas/events/{type_name}.v1.json")
        (tmp_path / f"{type_name}.v1.json").write_text(json.dumps(body))
        event_type = EventType(
            type_name, f"test.{name}", producer, consumers, "a test-only event type", schema_dir=tmp_path
        )
        EVENT_TYPES[type_name] = event_type
        registered.append(type_name)
        topics_ensure(
            bootstrap_servers=kafka_broker.bootstrap_servers,
            topics=[event_type.topic, event_type.dead_letter_topic],
            partitions=partitions,
        )
        return event_type

    yield create
    for type_name in registered:
        EVENT_TYPES.pop(type_name, None)


def relay_outbox(*, alias: str, bootstrap_servers: str) -> int:
    """Send everything committed in `alias`'s outbox; return how many events were sent."""
    from arbiter.events.relay import OutboxRelay

    relay = OutboxRelay(alias=alias, bootstrap_servers=bootstrap_servers)
    total = 0
    try:
        while sent := relay.relay_batch():
            total += sent
    finally:
        relay.close()
    return total


@contextlib.contextmanager
def consumer_running(
    *,
    consumer: str,
    alias: str,
    handlers: Mapping[str, Callable[..., None]],
    bootstrap_servers: str,
    max_attempts: int = 3,
    backoff_s: float = 0.05,
    session_timeout_ms: int = TEST_SESSION_TIMEOUT_MS,
) -> Iterator[Any]:
    """Run an `EventConsumer` in a thread (`consumer:<consumer>:<n>`) until the block ends; yield it."""
    from arbiter.events.consumer import ConsumerConfig, EventConsumer

    runner = EventConsumer(
        consumer=consumer,
        alias=alias,
        handlers=handlers,
        bootstrap_servers=bootstrap_servers,
        config=ConsumerConfig(
            max_attempts=max_attempts,
            backoff_s=backoff_s,
            session_timeout_ms=session_timeout_ms,
            poll_timeout_ms=100,
        ),
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=runner.run, args=(stop,), name=f"consumer:{consumer}:{next(_instances)}", daemon=True
    )
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(timeout=30)


def wait_for(condition: Callable[[], Any], *, timeout_s: float = 20.0, interval_s: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy (and return that), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)
