from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.services import db_alias
from arbiter.events import conf
from arbiter.events.consumer import EventConsumer
from arbiter.events.handlers import handlers_for
from arbiter.events.workers import loops_run, selected_services, services_option

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Deliver events to the enabled services' handlers (consumer group arbiter.<service> each)."

    def add_arguments(self, parser: CommandParser) -> None:
        services_option(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        bootstrap = conf.bootstrap_servers()
        config = conf.consumer_config()
        consumers = []
        for service in selected_services(options["services"]):
            handlers = handlers_for(service)
            if handlers:
                consumers.append(
                    EventConsumer(
                        consumer=service,
                        alias=db_alias(service),
                        handlers=handlers,
                        bootstrap_servers=bootstrap,
                        config=config,
                    )
                )
        if not consumers:
            # Stay up rather than exit: a supervisor would take an exit for a crash and restart it.
            log.info("no enabled service consumes events; idling")
        sys.exit(loops_run([(f"consumer:{consumer.consumer}", consumer.run) for consumer in consumers]))
