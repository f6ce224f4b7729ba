from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from kafka.errors import KafkaError

from arbiter.config.services import db_alias
from arbiter.events import conf
from arbiter.events.broker import topics_ensure
from arbiter.events.registry import broker_topics
from arbiter.events.relay import OutboxRelay
from arbiter.events.workers import loops_run, selected_services, services_option

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Send every enabled service's committed outbox events to Kafka, in order (one loop per database)."

    def add_arguments(self, parser: CommandParser) -> None:
        services_option(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        bootstrap = conf.bootstrap_servers()
        try:
            topics_ensure(
                bootstrap_servers=bootstrap, topics=broker_topics(), partitions=conf.topic_partitions()
            )
        except KafkaError as exc:
            # The relay waits for the broker anyway; topics are created by whoever reaches it first.
            log.warning("could not create topics now: %s", exc)
        config = conf.relay_config()
        relays = [
            OutboxRelay(alias=db_alias(service), bootstrap_servers=bootstrap, config=config)
            for service in selected_services(options["services"])
        ]
        sys.exit(loops_run([(f"relay:{relay.alias}", relay.run) for relay in relays]))
