from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Min, Q

from arbiter.config.services import db_alias
from arbiter.events import conf
from arbiter.events.broker import EmbeddedBroker, topics_ensure
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import EVENT_TYPES, broker_topics
from arbiter.events.tools import dead_letters_list, dead_letters_replay, events_tail


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())


class Command(BaseCommand):
    help = "Inspect and operate the event backbone: tail, dlq list|replay, outbox, topics, broker."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)

        tail = commands.add_parser("tail", help="print events as they arrive (JSON lines)")
        tail.add_argument("--type", action="append", default=[], dest="types", help="repeatable")
        tail.add_argument("--org", help="only this org id")
        tail.add_argument("--from-beginning", action="store_true", help="start at the oldest retained event")
        tail.add_argument("--limit", type=int, help="stop after this many events")

        dlq = commands.add_parser("dlq", help="dead-lettered events")
        dlq_actions = dlq.add_subparsers(dest="dlq_action", required=True)
        listing = dlq_actions.add_parser("list", help="print dead letters (JSON lines)")
        listing.add_argument("--topic", action="append", default=[], dest="topics", help="domain topic")
        listing.add_argument("--unreplayed", action="store_true", help="only those not replayed by --all")
        replay = dlq_actions.add_parser(
            "replay", help="send dead events back to the consumer that failed them"
        )
        replay.add_argument("--topic", action="append", default=[], dest="topics", help="domain topic")
        which = replay.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", action="append", default=[], dest="ids", help="event id (repeatable)")
        which.add_argument("--all", action="store_true", help="every dead letter not replayed before")

        commands.add_parser("outbox", help="unsent events per service database")
        commands.add_parser("topics", help="create the missing topics on the configured broker")
        broker = commands.add_parser("broker", help="run the embedded broker in the foreground")
        broker.add_argument("--port", type=int, help="loopback port (default: a free one)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "tail":
            self._tail(options)
        elif action == "dlq":
            self._dlq(options)
        elif action == "outbox":
            self._outbox()
        elif action == "topics":
            created = topics_ensure(
                bootstrap_servers=conf.bootstrap_servers(),
                topics=broker_topics(),
                partitions=conf.topic_partitions(),
            )
            self.stdout.write(f"created: {', '.join(created) if created else 'none (all present)'}")
        elif action == "broker":
            self._broker(options)

    def _line(self, payload: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(payload, ensure_ascii=False, default=str))
        self.stdout.flush()

    def _tail(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options["types"]) - set(EVENT_TYPES))
        if unknown:
            raise CommandError(f"unknown event types: {', '.join(unknown)}")
        stop = threading.Event()
        _stop_on_signals(stop)
        events_tail(
            bootstrap_servers=conf.bootstrap_servers(),
            write=self._line,
            types=options["types"],
            org_id=options["org"],
            from_beginning=options["from_beginning"],
            limit=options["limit"],
            stop=stop,
        )

    def _dlq(self, options: dict[str, Any]) -> None:
        bootstrap = conf.bootstrap_servers()
        topics = options["topics"] or None
        if options["dlq_action"] == "list":
            for letter in dead_letters_list(
                bootstrap_servers=bootstrap, topics=topics, unreplayed=options["unreplayed"]
            ):
                self._line(letter.summary())
            return
        if options["all"]:
            letters = dead_letters_list(bootstrap_servers=bootstrap, topics=topics, unreplayed=True)
        else:
            wanted = set(options["ids"])
            letters = [
                letter
                for letter in dead_letters_list(bootstrap_servers=bootstrap, topics=topics)
                if letter.event.get("id") in wanted
            ]
            missing = wanted - {letter.event.get("id") for letter in letters}
            if missing:
                raise CommandError(f"no dead letter for: {', '.join(sorted(missing))}")
        count = dead_letters_replay(bootstrap_servers=bootstrap, letters=letters, remember=options["all"])
        self.stdout.write(f"replayed {count} event(s)")

    def _outbox(self) -> None:
        for service in settings.ARBITER_SERVICES:
            alias = db_alias(service)
            stats = OutboxEvent.objects.using(alias).aggregate(
                unsent=Count("id", filter=Q(sent_at__isnull=True)),
                oldest_unsent=Min("created_at", filter=Q(sent_at__isnull=True)),
                failing=Count("id", filter=Q(sent_at__isnull=True) & ~Q(last_error="")),
            )
            self._line({"service": service, "database": alias, **stats})

    def _broker(self, options: dict[str, Any]) -> None:
        broker = EmbeddedBroker(port=options["port"])
        broker.start()
        topics_ensure(
            bootstrap_servers=broker.bootstrap_servers,
            topics=broker_topics(),
            partitions=conf.topic_partitions(),
        )
        self.stdout.write(
            f"embedded broker at {broker.bootstrap_servers}; export KAFKA_BOOTSTRAP_SERVERS to use it"
        )
        self.stdout.flush()
        stopped = threading.Event()
        _stop_on_signals(stopped)
        try:
            while not stopped.wait(0.5):
                if not broker.running:
                    sys.exit("the embedded broker exited")
        finally:
            broker.stop()
