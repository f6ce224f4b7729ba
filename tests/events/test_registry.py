"""The registry is the one list of event types: each has a valid schema that its example passes, a topic
with a dead-letter route, a known producer, and consumers that really declare a handler."""

from __future__ import annotations

import json

import jsonschema
import pytest

from arbiter.config.services import ALL_SERVICES
from arbiter.events.handlers import handlers_for
from arbiter.events.registry import EVENT_TYPES, SCHEMA_DIR, broker_topics, get_event_type

TYPES = sorted(EVENT_TYPES)
REQUIRED_TYPES = {
    "snapshot.created",
    "training.requested",
    "training.progress",
    "training.completed",
    "training.failed",
    "deployment.requested",
    "deployment.live",
    "deployment.stopped",
    "annotation.completed",
    "usage.recorded",
}


def test_the_registry_lists_every_type_the_platform_needs() -> None:
    assert set(EVENT_TYPES) >= REQUIRED_TYPES


@pytest.mark.parametrize("type_name", TYPES)
def test_every_type_has_a_valid_versioned_schema_that_its_example_passes(type_name: str) -> None:
    event_type = get_event_type(type_name)
    assert event_type.schema_path.name == f"{type_name}.v{event_type.version}.json"
    jsonschema.Draft202012Validator.check_schema(event_type.schema)
    assert event_type.schema["examples"], f"{type_name} has no example"
    for example in event_type.schema["examples"]:
        event_type.validate(example)


@pytest.mark.parametrize("type_name", TYPES)
def test_every_type_has_a_domain_topic_a_dead_letter_route_and_a_known_producer(type_name: str) -> None:
    event_type = get_event_type(type_name)
    assert event_type.topic.startswith("arbiter.")
    assert event_type.topic in broker_topics()
    assert event_type.dead_letter_topic == f"{event_type.topic}.dlq"
    assert event_type.dead_letter_topic in broker_topics()
    assert event_type.producer in ALL_SERVICES
    assert set(event_type.consumers) <= set(ALL_SERVICES)


@pytest.mark.parametrize(
    ("type_name", "consumer"),
    sorted((et.type, consumer) for et in EVENT_TYPES.values() for consumer in et.consumers),
)
def test_every_listed_consumer_is_importable_and_handles_the_type(type_name: str, consumer: str) -> None:
    declared = handlers_for(consumer)
    assert type_name in declared, f"services/{consumer}/events.py has no @handles({type_name!r})"


def test_no_schema_file_is_left_out_of_the_registry() -> None:
    registered = {get_event_type(name).schema_path.name for name in TYPES}
    on_disk = {path.name for path in SCHEMA_DIR.glob("*.json")}
    assert on_disk == registered
    for path in SCHEMA_DIR.glob("*.json"):
        assert json.loads(path.read_text())["$id"].endswith(path.name)
