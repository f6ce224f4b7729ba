"""The registry is the one list of event types: each has a valid schema that its example passes, a topic
with a dead-letter route, a known producer, and consumers that really declare a handler."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest

from arbiter.config.services import ALL_SERVICES
from arbiter.events.handlers import handlers_for
from arbiter.events.registry import EVENT_TYPES, SCHEMA_DIR, EventSchemaError, broker_topics, get_event_type

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
    jsonschema_rs.meta.validate(event_type.schema)
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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"units": -1}, "at units: -1 is less than the minimum of 0"),
        ({"meter": "minutes"}, "at meter: "),
        (
            {
                "cascade": {
                    **dict.fromkeys(
                        ("policy_requests", "llm_calls", "llm_prompt_tokens", "llm_completion_tokens"), 0
                    ),
                    "policy_units": "two",
                }
            },
            "at cascade/policy_units: ",
        ),
    ],
)
def test_data_off_its_schema_is_refused_naming_where_and_why(data: dict, message: str) -> None:
    event_type = get_event_type("usage.recorded")
    good = dict(event_type.example)
    event_type.validate(good)
    with pytest.raises(
        EventSchemaError, match=f"^usage.recorded data does not match its schema v1 {message}"
    ):
        event_type.validate({**good, **data})


def test_formats_are_checked() -> None:
    event_type = next(et for et in EVENT_TYPES.values() if '"date-time"' in et.schema_path.read_text())
    example = dict(event_type.example)
    field = next(
        name for name, value in event_type.schema["properties"].items() if value.get("format") == "date-time"
    )
    event_type.validate(example)
    with pytest.raises(EventSchemaError, match=f"at {field}: "):
        event_type.validate({**example, field: "yesterday"})
