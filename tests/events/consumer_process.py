"""A consumer process for the crash tests: `python -m tests.events.consumer_process SPEC_JSON`.

It registers the test's event types (their schemas are files in the spec's schema_dir) and runs an
`EventConsumer` whose handler applies each event by publishing a follow-up event in the consumer's database,
until SIGTERM, or until the test kills it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(spec: dict) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.config.settings")
    import django

    django.setup()
    from arbiter.events import conf, publish
    from arbiter.events.consumer import EventConsumer
    from arbiter.events.envelope import Event
    from arbiter.events.registry import EVENT_TYPES, EventType
    from arbiter.events.workers import loops_run

    for item in spec["types"]:
        EVENT_TYPES[item["type"]] = EventType(
            item["type"], item["topic"], item["producer"], (), "test", schema_dir=Path(spec["schema_dir"])
        )

    def apply(event: Event) -> None:
        publish(type=spec["follow_up"], org_id=event.org_id, subject=event.subject, data=event.data)

    consumer = EventConsumer(
        consumer=spec["consumer"],
        alias=spec["alias"],
        handlers={spec["handles"]: apply},
        bootstrap_servers=conf.bootstrap_servers(),
        config=conf.consumer_config(),
    )
    return loops_run([("consumer", consumer.run)])


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
