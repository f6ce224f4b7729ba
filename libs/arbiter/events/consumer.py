"""The consumer runner: delivers events from Kafka to a service's `@handles` functions, each exactly once.

Per service, one consumer group `arbiter.<service>` reads the topics of the types it handles. For each event:
1. Decode and check it: a message that is not a CloudEvent, names an unknown type, lacks its org or fails its
   schema can never succeed, so it goes straight to the dead-letter topic.
2. In a transaction on the service's database: record the event id in `ProcessedEvent` (a redelivered
   event stops here), then run the handler with the event's org in scope. Trace context continues from
   the event's `traceparent`. Consecutive events of a partition share one transaction, each handler in a
   savepoint, so that a busy consumer commits once per batch rather than once per event.
3. A handler that raises is retried with backoff, a bounded number of times; then the event goes to the
   dead-letter topic `<topic>.dlq` with the error in its headers, and the consumer moves on.
4. The partition's offset is committed only after the transactions committed (or the event was
   dead-lettered). A crash between the two redelivers events that step 2 then recognises.
If the database or the broker is unreachable, nothing is counted against the event: the consumer rewinds
to it and waits.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connections, transaction
from django.utils import timezone
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from opentelemetry import trace

from arbiter.events.clients import DEFAULT_SESSION_TIMEOUT_MS, consumer_create, producer_create
from arbiter.events.envelope import EnvelopeError, Event
from arbiter.events.handlers import Handler
from arbiter.events.registry import EventSchemaError, UnknownEventType, dead_letter_topic, get_event_type
from arbiter.events.retrying import RetryCallState, RetryError, Stopped, retrying
from arbiter.telemetry.propagation import context_from_traceparent
from arbiter.tenancy.scoping import org_scope

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("arbiter.events")

# Headers a dead-lettered message carries besides the original ones (its value is the original bytes).
DLQ_ERROR = "arbiter-dlq-error"
DLQ_REASON = "arbiter-dlq-reason"
DLQ_CONSUMER = "arbiter-dlq-consumer"
DLQ_ATTEMPTS = "arbiter-dlq-attempts"
DLQ_TOPIC = "arbiter-dlq-topic"
DLQ_PARTITION = "arbiter-dlq-partition"
DLQ_OFFSET = "arbiter-dlq-offset"
DLQ_TIME = "arbiter-dlq-time"
# `ProcessedEvent`'s table. PostgreSQL and SQLite both skip an already recorded (consumer, event_id) this way
# and return the ids they did record.
_CLAIM_SQL = (
    "INSERT INTO events_processed (consumer, event_id, type, processed_at) VALUES {rows} "
    "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
)
_UNCLAIM_SQL = "DELETE FROM events_processed WHERE consumer = %s AND event_id IN ({ids})"
# A replayed event names the one consumer it is for; the others skip it (they already processed it).
REPLAY_FOR = "arbiter-replay-for"


def consumer_group(consumer: str) -> str:
    return f"arbiter.{consumer}"


class Outcome(enum.Enum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead_lettered"


@dataclass
class ConsumerConfig:
    max_attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    poll_timeout_ms: int = 500


class _Rewind(Exception):
    """Stop processing this partition and read the current event again later (infrastructure trouble)."""


class _Duplicate(Exception):
    pass


class _Rejected(Exception):
    """The event can never be handled: dead-letter it without retrying."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _SavepointOnFirstQuery:
    """A database execute wrapper that takes a savepoint just before a handler's first query, so that a
    failing handler's writes can be undone alone, and a handler that never queries costs no round trip."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.savepoint: str | None = None
        self._taking = False

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.savepoint is None and not self._taking:
            self._taking = True  # the SAVEPOINT statement itself passes through this wrapper
            try:
                self.savepoint = transaction.savepoint(using=self.alias)
            finally:
                self._taking = False
        return execute(sql, params, many, context)


def _header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode(errors="replace") if value is not None else None
    return None


class EventConsumer:
    """Runs one consumer's handlers: `run()` polls until `stop` is set; `process()` handles one record."""

    def __init__(
        self,
        *,
        consumer: str,
        alias: str,
        handlers: Mapping[str, Handler],
        bootstrap_servers: str,
        config: ConsumerConfig | None = None,
    ) -> None:
        self.consumer = consumer
        self.group = consumer_group(consumer)
        self.alias = alias
        self.handlers = dict(handlers)
        self.bootstrap_servers = bootstrap_servers
        self.config = config or ConsumerConfig()
        self.topics = sorted({get_event_type(type_name).topic for type_name in self.handlers})
        self._dlq_producer: KafkaProducer | None = None
        self._stop = threading.Event()
        # The partitions this instance owns in its group, as of its last poll.
        self.assigned: frozenset[TopicPartition] = frozenset()

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        kafka_consumer = self._connect()
        if kafka_consumer is None:
            return
        log.info("consumer started", extra={"consumer": self.consumer, "topics": self.topics})
        try:
            while not self._stop.is_set():
                try:
                    batches = kafka_consumer.poll(timeout_ms=self.config.poll_timeout_ms)
                except KafkaError as exc:
                    log.warning("consumer cannot poll: %s", exc, extra={"consumer": self.consumer})
                    self._stop.wait(1.0)
                    continue
                self.assigned = frozenset(kafka_consumer.assignment())
                done: dict[TopicPartition, OffsetAndMetadata] = {}
                for partition, records in batches.items():
                    next_offset = self._process_partition(kafka_consumer, partition, records)
                    if next_offset is not None:
                        done[partition] = OffsetAndMetadata(next_offset, "", -1)
                    if self._stop.is_set():
                        break
                self._commit(kafka_consumer, done)
        finally:
            kafka_consumer.close(autocommit=False)
            if self._dlq_producer is not None:
                self._dlq_producer.close(timeout=2)
            # This thread's database connections end with it (tests drop their databases afterwards).
            connections.close_all()
            log.info("consumer stopped", extra={"consumer": self.consumer})

    def _connect(self) -> KafkaConsumer | None:
        def cannot_reach(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning("consumer cannot reach Kafka: %s", error, extra={"consumer": self.consumer})

        connect = retrying(
            stop=self._stop,
            first_s=0.2,
            max_s=self.config.backoff_max_s,
            retry_on=KafkaError,
            on_retry=cannot_reach,
        )
        try:
            return connect(
                consumer_create,
                bootstrap_servers=self.bootstrap_servers,
                group_id=self.group,
                topics=self.topics,
                client_id=f"arbiter-consumer-{self.consumer}",
                session_timeout_ms=self.config.session_timeout_ms,
            )
        except Stopped:
            return None

    def _process_partition(
        self, kafka_consumer: KafkaConsumer, partition: TopicPartition, records: list[ConsumerRecord]
    ) -> int | None:
        """Process a partition's records in order; return the offset to commit (None: nothing done).

        Runs of events that succeed share one database transaction (a savepoint each), so a busy partition
        costs one commit per batch rather than per event. The first event that fails (or must be
        dead-lettered) ends the run; it then takes the careful path: its own transactions, retries, backoff.
        """
        next_offset: int | None = None
        position = 0
        while position < len(records) and not self._stop.is_set():
            try:
                completed, failure = self._process_together(records[position:])
            except Exception:
                # The shared transaction itself failed (typically the database went away): none of it
                # happened, so read the run again later.
                log.warning(
                    "a batch transaction failed; rewinding", exc_info=True, extra={"consumer": self.consumer}
                )
                kafka_consumer.seek(partition, records[position].offset)
                if not self._database_usable():
                    self._stop.wait(self.config.backoff_s * 4)
                return next_offset
            position += completed
            if completed:
                next_offset = records[position - 1].offset + 1
            if position >= len(records) or self._stop.is_set():
                break
            record = records[position]
            try:
                self.process(record, failed=failure)
            except _Rewind:
                kafka_consumer.seek(partition, record.offset)
                return next_offset
            position += 1
            next_offset = record.offset + 1
        return next_offset

    def _process_together(self, records: list[ConsumerRecord]) -> tuple[int, Exception | None]:
        """Handle the leading records in one transaction; stop at the first one that fails or is rejected.

        Returns how many records are done and, if the next one's handler raised, its error. Round trips are
        what a consumer spends its time on, so the run's event ids are claimed in one statement, and a
        handler gets a savepoint (rolled back if it fails, otherwise ended by the commit) only once it
        touches the database.
        """
        routed: list[tuple[ConsumerRecord, tuple[Event, Handler] | None]] = []
        for record in records:
            try:
                routed.append((record, self._route(record)))
            except _Rejected:
                break  # dead-lettered on the careful path, outside this transaction
        if not routed:
            return 0, None
        completed = 0
        with transaction.atomic(using=self.alias):
            claimed = self._claim([item[0] for _, item in routed if item is not None])
            for record, item in routed:
                if self._stop.is_set():
                    break
                if item is not None and item[0].id in claimed:
                    event, handler = item
                    guard = _SavepointOnFirstQuery(self.alias)
                    try:
                        with connections[self.alias].execute_wrapper(guard):
                            self._run_handler(event, handler, record)
                    except Exception as exc:
                        if guard.savepoint is not None:
                            transaction.savepoint_rollback(guard.savepoint, using=self.alias)
                        self._unclaim(claimed)
                        return completed, exc
                    # Claimed once: a second copy later in the same run is a duplicate.
                    claimed.discard(event.id)
                completed += 1
            # Whatever the loop did not reach is not done: it must not stay claimed.
            self._unclaim(claimed)
        return completed, None

    def _commit(
        self, kafka_consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        # Every handler transaction behind these offsets has committed: a crash before this line only
        # redelivers events that the processed-event ids then recognise.
        if not offsets:
            return
        try:
            kafka_consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partition moved to another member (or the broker is away): it will redeliver these
            # events, and the processed-event ids make that harmless.
            log.warning("offset commit failed: %s", exc, extra={"consumer": self.consumer})

    # --- one record -----------------------------------------------------------------------------------------
    def process(self, record: ConsumerRecord, *, failed: Exception | None = None) -> Outcome:
        """Handle one record on the careful path: each attempt in its own transaction, retried with backoff,
        dead-lettered after `max_attempts`. `failed` is the error of an attempt already made."""
        try:
            routed = self._route(record)
        except _Rejected as rejected:
            self._dead_letter(record, reason=rejected.reason, error=str(rejected), attempts=0)
            return Outcome.DEAD_LETTERED
        if routed is None:
            return Outcome.SKIPPED
        event, handler = routed
        earlier_failure = failed

        def attempt() -> Outcome:
            nonlocal earlier_failure
            if earlier_failure is not None:
                # The attempt made on the fast path counts as the first one.
                error, earlier_failure = earlier_failure, None
                raise error
            try:
                return self._handle(event, handler, record)
            except _Duplicate:
                return Outcome.DUPLICATE
            except Exception as exc:
                if not self._database_usable():
                    log.warning("database unavailable; will retry the event", extra=self._log_extra(event))
                    self._pause(self.config.backoff_s * 4)
                    raise _Rewind() from exc
                raise

        def failed_once_more(state: RetryCallState) -> None:
            log.warning(
                "handler failed (attempt %d); retrying", state.attempt_number, extra=self._log_extra(event)
            )

        handle = retrying(
            stop=self._stop,
            first_s=self.config.backoff_s,
            max_s=self.config.backoff_max_s,
            attempts=self.config.max_attempts,
            keep_going=lambda error: not isinstance(error, _Rewind),
            on_retry=failed_once_more,
        )
        try:
            return handle(attempt)
        except Stopped:
            raise _Rewind() from None
        except RetryError as exhausted:
            error = exhausted.last_attempt.exception()
            attempts = exhausted.last_attempt.attempt_number
            log.error(
                "handler failed %d times; dead-lettering the event",
                attempts,
                extra=self._log_extra(event),
                exc_info=error,
            )
            self._dead_letter(
                record, reason="handler-failed", error=f"{type(error).__name__}: {error}", attempts=attempts
            )
            return Outcome.DEAD_LETTERED

    def _route(self, record: ConsumerRecord) -> tuple[Event, Handler] | None:
        """The event and this consumer's handler for it; None if it is not for this consumer.

        Raises `_Rejected` for a message that can never be handled."""
        replay_for = _header(record, REPLAY_FOR)
        if replay_for is not None and replay_for != self.consumer:
            return None
        event = self._decode(record)
        handler = self.handlers.get(event.type)
        return None if handler is None else (event, handler)

    def _decode(self, record: ConsumerRecord) -> Event:
        if record.value is None:
            raise _Rejected("invalid-envelope", "the message has no value")
        try:
            event = Event.from_json(record.value)
        except EnvelopeError as exc:
            raise _Rejected("invalid-envelope", str(exc)) from None
        try:
            event_type = get_event_type(event.type)
        except UnknownEventType as exc:
            raise _Rejected("unknown-type", str(exc)) from None
        if event.type in self.handlers:
            try:
                event_type.validate(event.data)
            except EventSchemaError as exc:
                raise _Rejected("schema", str(exc)) from None
        return event

    def _handle(self, event: Event, handler: Handler, record: ConsumerRecord) -> Outcome:
        with transaction.atomic(using=self.alias):
            if not self._claim([event]):
                raise _Duplicate()
            self._run_handler(event, handler, record)
        return Outcome.HANDLED

    def _run_handler(self, event: Event, handler: Handler, record: ConsumerRecord) -> None:
        parent = context_from_traceparent(event.traceparent)
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation": "process",
            "messaging.destination.name": record.topic,
            "messaging.kafka.consumer.group": self.group,
            "messaging.kafka.message.offset": record.offset,
            "cloudevents.event_id": event.id,
            "cloudevents.event_type": event.type,
            "arbiter.org_id": event.org_id,
        }
        with (
            _tracer.start_as_current_span(
                f"{event.type} process", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
            ),
            org_scope(event.org_id),
        ):
            handler(event)

    def _claim(self, events: list[Event]) -> set[str]:
        """Record the events as processed by this consumer, in the open transaction; return the ids that
        were not already recorded.

        Done before the handlers run, so that a concurrent second delivery (during a rebalance) waits on
        these rows and then finds them.
        """
        if not events:
            return set()
        connection = connections[self.alias]
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        rows = ", ".join(["(%s, %s, %s, %s)"] * len(events))
        params: list[str | None] = []
        for event in events:
            params += [self.consumer, event.id, event.type, now]
        with connection.cursor() as cursor:
            cursor.execute(_CLAIM_SQL.format(rows=rows), params)
            return {row[0] for row in cursor.fetchall()}

    def _unclaim(self, event_ids: set[str]) -> None:
        if event_ids:
            with connections[self.alias].cursor() as cursor:
                cursor.execute(
                    _UNCLAIM_SQL.format(ids=", ".join(["%s"] * len(event_ids))), [self.consumer, *event_ids]
                )

    def _database_usable(self) -> bool:
        connection = connections[self.alias]
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception:
            connection.close()
            return False
        return True

    def _pause(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Rewind()

    # --- dead letters ---------------------------------------------------------------------------------------
    def _dead_letter(self, record: ConsumerRecord, *, reason: str, error: str, attempts: int) -> None:
        headers = [(key, value) for key, value in (record.headers or ()) if not key.startswith("arbiter-")]
        headers += [
            (DLQ_REASON, reason.encode()),
            (DLQ_ERROR, error[:4000].encode()),
            (DLQ_CONSUMER, self.consumer.encode()),
            (DLQ_ATTEMPTS, str(attempts).encode()),
            (DLQ_TOPIC, record.topic.encode()),
            (DLQ_PARTITION, str(record.partition).encode()),
            (DLQ_OFFSET, str(record.offset).encode()),
            (DLQ_TIME, datetime.now(UTC).isoformat().encode()),
        ]
        try:
            if self._dlq_producer is None:
                self._dlq_producer = producer_create(
                    bootstrap_servers=self.bootstrap_servers, client_id=f"arbiter-dlq-{self.consumer}"
                )
            self._dlq_producer.send(
                dead_letter_topic(record.topic), key=record.key, value=record.value, headers=headers
            ).get(timeout=30)
        except KafkaError as exc:
            # Without a dead-letter copy the event must not be skipped: read it again once Kafka answers.
            log.warning("cannot dead-letter an event: %s", exc, extra={"consumer": self.consumer})
            self._pause(1.0)
            raise _Rewind() from exc
        log.error(
            "event dead-lettered",
            extra={
                "consumer": self.consumer,
                "reason": reason,
                "topic": record.topic,
                "offset": record.offset,
            },
        )

    def _log_extra(self, event: Event) -> dict[str, object]:
        return {
            "consumer": self.consumer,
            "event_id": event.id,
            "event_type": event.type,
            "org_id": event.org_id,
        }
