"""The outbox relay: sends committed outbox rows to Kafka in order, then marks them sent.

Guarantees, for each service database (alias):
- Nothing uncommitted is sent: the relay only sees committed rows.
- Nothing committed is lost: a row's "sent" mark is committed only after the broker acknowledged it
  (acks=all), so a relay killed at any line re-sends, after its restart, what it had not marked. Consumers
  drop the copies by event id (at-least-once to Kafka + idempotent consumers = effectively once).
- A tenant's events keep their order: rows are sent in id order, the producer keeps one request in flight
  and never abandons a record, and while any record's acknowledgement is outstanding (the broker is down)
  the relay claims nothing new; it waits, then catches up.
- Several relays may serve one PostgreSQL database: a batch is claimed and marked in one statement
  (`FOR UPDATE SKIP LOCKED`) inside a transaction that lasts until Kafka answered, and a relay sends a key's
  rows only up to the first earlier row of that key that another relay holds.
  SQLite (local) has one relay per database; it holds no transaction while it talks to Kafka, so the
  service's writers are never blocked by a slow broker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from django.db import close_old_connections, connections, transaction
from django.db.models import F, Min
from django.utils import timezone
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata

from arbiter.events.clients import producer_create
from arbiter.events.envelope import CONTENT_TYPE
from arbiter.events.models import OutboxEvent
from arbiter.events.retrying import RetryCallState, Stopped, retrying

log = logging.getLogger(__name__)

# PostgreSQL: claim the next unsent rows and mark them in one statement; a row another relay has locked is
# skipped rather than waited for. The transaction around it unmarks what Kafka did not acknowledge.
_CLAIM_SQL = (
    "UPDATE events_outbox SET sent_at = %s WHERE id IN ("
    "SELECT id FROM events_outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
    ") RETURNING id, topic, key, payload"
)

# Structured content mode (the CloudEvents Kafka binding): the whole event is the value.
_HEADERS = [("content-type", f"{CONTENT_TYPE}; charset=utf-8".encode())]


@dataclass
class RelayConfig:
    batch_size: int = 1000
    # How long one batch waits for acknowledgements before the relay stops claiming and just waits.
    ack_timeout_s: float = 10.0
    # An idle relay polls its outbox: soon after work (latency), then less and less often (CPU).
    idle_sleep_s: float = 0.01
    idle_sleep_max_s: float = 0.2
    backoff_max_s: float = 5.0
    # Sent rows are kept this long (for `arbiter events` forensics), then deleted.
    retention: timedelta = timedelta(days=7)
    purge_every_s: float = 600.0


@dataclass
class _Unacknowledged:
    """Records handed to the producer whose acknowledgement the relay stopped waiting for."""

    ids: list[int] = field(default_factory=list)
    futures: list[FutureRecordMetadata] = field(default_factory=list)


class _AwaitingAcknowledgement(Exception):
    """Kafka still holds records of an earlier batch: back off before asking again."""


class _Row(NamedTuple):
    id: int
    topic: str
    key: str
    payload: str


class OutboxRelay:
    """Relays one service database's outbox: `run()` loops until `stop` is set; `relay_batch()` is a step."""

    def __init__(self, *, alias: str, bootstrap_servers: str, config: RelayConfig | None = None) -> None:
        self.alias = alias
        self.bootstrap_servers = bootstrap_servers
        self.config = config or RelayConfig()
        self._producer: KafkaProducer | None = None
        self._unacknowledged = _Unacknowledged()
        self._last_purge = 0.0

    @property
    def _locks_rows(self) -> bool:
        return connections[self.alias].vendor == "postgresql"

    def _producer_get(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = producer_create(
                bootstrap_servers=self.bootstrap_servers, client_id=f"arbiter-relay-{self.alias}"
            )
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            # Whatever is still unacknowledged stays unsent in the outbox and goes out after a restart.
            with contextlib.suppress(KafkaError):
                self._producer.close(timeout=1)
            self._producer = None

    def run(self, stop: threading.Event) -> None:
        # Errors and unacknowledged sends back off (the retry helper); an idle outbox is polled soon after
        # work (latency), then less and less often (CPU): polling, not a retry, so it stays a plain loop.
        step = retrying(stop=stop, first_s=0.2, max_s=self.config.backoff_max_s, on_retry=self._before_retry)
        idle = self.config.idle_sleep_s
        log.info("outbox relay started", extra={"alias": self.alias})
        try:
            while not stop.is_set():
                try:
                    sent = step(self._step)
                except Stopped:
                    break
                if sent:
                    idle = self.config.idle_sleep_s
                else:
                    stop.wait(idle)
                    idle = min(idle * 2, self.config.idle_sleep_max_s)
        finally:
            self.close()
            log.info("outbox relay stopped", extra={"alias": self.alias})

    def _step(self) -> int:
        sent = self.relay_batch()
        self._purge_if_due()
        if not sent and self._unacknowledged.ids:
            raise _AwaitingAcknowledgement()
        return sent

    def _before_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _AwaitingAcknowledgement):
            return  # `_send` said so when it started waiting
        if isinstance(error, KafkaError):
            # Typically: no broker to bootstrap from. The rows stay; try again, more slowly each time.
            log.warning("outbox relay cannot reach Kafka: %s", error, extra={"alias": self.alias})
            return
        log.error("outbox relay step failed", exc_info=error, extra={"alias": self.alias})
        close_old_connections()

    def relay_batch(self) -> int:
        """Send the next committed unsent rows, mark the acknowledged ones sent; return how many it marked."""
        producer = self._producer_get()
        if self._unacknowledged.ids:
            return self._settle_unacknowledged(producer)
        if not self._locks_rows:
            acknowledged = self._send(producer, self._claim())
            self._mark_sent(acknowledged)
            return len(acknowledged)
        with transaction.atomic(using=self.alias):
            claimed, sendable = self._claim_locked()
            acknowledged = self._send(producer, sendable)
            # The claim marked every claimed row sent; the transaction commits only what Kafka acknowledged.
            self._mark_unsent({row.id for row in claimed} - set(acknowledged))
            return len(acknowledged)

    def _claim(self) -> list[_Row]:
        unsent = OutboxEvent.objects.using(self.alias).filter(sent_at__isnull=True).order_by("id")
        return [_Row(*values) for values in unsent.values_list(*_Row._fields)[: self.config.batch_size]]

    def _claim_locked(self) -> tuple[list[_Row], list[_Row]]:
        """Claim and mark the next unsent rows in one statement, skipping rows another relay holds; return
        the claimed rows and, of those, the ones that may be sent now."""
        with connections[self.alias].cursor() as cursor:
            cursor.execute(_CLAIM_SQL, [timezone.now(), self.config.batch_size])
            rows = sorted(_Row(*values) for values in cursor.fetchall())
        if not rows:
            return rows, rows
        # A skipped row of the same key that precedes one of ours must go first: send each key's rows only up
        # to the first unsent row of that key that is not ours (ours are already marked in this transaction).
        held_elsewhere = dict(
            OutboxEvent.objects.using(self.alias)
            .filter(sent_at__isnull=True, key__in={row.key for row in rows}, id__lt=rows[-1].id)
            .values("key")
            .annotate(first=Min("id"))
            .values_list("key", "first")
        )
        return rows, [row for row in rows if row.id < held_elsewhere.get(row.key, row.id + 1)]

    def _send(self, producer: KafkaProducer, rows: Sequence[_Row]) -> list[int]:
        """Hand the rows to the producer in order and wait for acknowledgements; return the acknowledged ids.

        Records still unacknowledged after `ack_timeout_s` are remembered: the relay claims nothing new until
        they settle."""
        futures: list[FutureRecordMetadata] = []
        for row in rows:
            try:
                futures.append(
                    producer.send(
                        row.topic, key=row.key.encode(), value=row.payload.encode(), headers=_HEADERS
                    )
                )
            except KafkaTimeoutError:
                # No metadata for the topic (the broker is down): send the rest in a later batch, in order.
                break
        if not futures:
            return []
        with contextlib.suppress(KafkaTimeoutError):
            producer.flush(timeout=self.config.ack_timeout_s)
        acknowledged: list[int] = []
        for row, future in zip(rows, futures, strict=False):
            if not future.is_done:
                self._unacknowledged.ids.append(row.id)
                self._unacknowledged.futures.append(future)
            elif future.succeeded():
                acknowledged.append(row.id)
            else:
                self._record_failure(row.id, future.exception)
        if self._unacknowledged.ids:
            log.warning(
                "Kafka has not acknowledged %d events; waiting before relaying more",
                len(self._unacknowledged.ids),
                extra={"alias": self.alias},
            )
        return acknowledged

    def _settle_unacknowledged(self, producer: KafkaProducer) -> int:
        # Short waits: `run()` calls again after its backoff, and a stop request is noticed in between.
        with contextlib.suppress(KafkaTimeoutError):
            producer.flush(timeout=1.0)
        pending = self._unacknowledged
        if not all(future.is_done for future in pending.futures):
            return 0
        self._unacknowledged = _Unacknowledged()
        acknowledged = []
        for row_id, future in zip(pending.ids, pending.futures, strict=True):
            if future.succeeded():
                acknowledged.append(row_id)
            else:
                self._record_failure(row_id, future.exception)
        self._mark_sent(acknowledged)
        log.info("Kafka is back; relaying again", extra={"alias": self.alias})
        return len(acknowledged)

    def _mark_sent(self, ids: list[int]) -> None:
        if ids:
            OutboxEvent.objects.using(self.alias).filter(id__in=ids).update(sent_at=timezone.now())

    def _mark_unsent(self, ids: set[int]) -> None:
        if ids:
            OutboxEvent.objects.using(self.alias).filter(id__in=ids).update(sent_at=None)

    def _record_failure(self, row_id: int, exc: Exception | None) -> None:
        # Only non-retriable errors end a send (the producer retries the others forever); the row stays
        # unsent and is tried again next batch, so an operator sees it in `last_error` rather than losing it.
        log.error("Kafka rejected an outbox event: %s", exc, extra={"alias": self.alias, "outbox_id": row_id})
        OutboxEvent.objects.using(self.alias).filter(id=row_id).update(
            attempts=F("attempts") + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
        )

    def _purge_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < self.config.purge_every_s:
            return
        self._last_purge = now
        cutoff = timezone.now() - self.config.retention
        deleted, _ = OutboxEvent.objects.using(self.alias).filter(sent_at__lt=cutoff).delete()
        if deleted:
            log.info("purged %d sent outbox events", deleted, extra={"alias": self.alias})
