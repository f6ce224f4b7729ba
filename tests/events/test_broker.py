"""The embedded broker: starts on loopback, answers Kafka clients, creates topics, stops; storage choices."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kafka import TopicPartition

from arbiter.events.apps import BrokerReadinessCheck
from arbiter.events.broker import (
    BOOTSTRAP_ENV,
    EmbeddedBroker,
    broker_problem,
    ensure_broker,
    free_loopback_port,
    topics_ensure,
)
from arbiter.events.clients import admin_create, consumer_create, producer_create
from arbiter.events.testing import wait_for


def _read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[bytes]:
    consumer = consumer_create(bootstrap_servers=bootstrap, group_id=None)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    values: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(values) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            values.extend(record.value for record in records)
    consumer.close()
    return values


def test_broker_answers_and_creates_topics_with_partitions(kafka_broker: EmbeddedBroker) -> None:
    assert broker_problem(bootstrap_servers=kafka_broker.bootstrap_servers) is None
    created = topics_ensure(
        bootstrap_servers=kafka_broker.bootstrap_servers, topics=["test.broker.a"], partitions=3
    )
    assert created == ["test.broker.a"]
    # A second call (a restarted `arbiter up`, a second relay) changes nothing and does not fail.
    assert topics_ensure(bootstrap_servers=kafka_broker.bootstrap_servers, topics=["test.broker.a"]) == []
    admin = admin_create(bootstrap_servers=kafka_broker.bootstrap_servers)
    [described] = admin.describe_topics(["test.broker.a"])
    admin.close()
    assert len(described["partitions"]) == 3


def test_stopped_broker_is_reported_unreachable_and_frees_its_port() -> None:
    broker = EmbeddedBroker()
    broker.start()
    address = broker.bootstrap_servers
    broker.stop()
    assert not broker.running
    assert broker_problem(bootstrap_servers=address, timeout_s=0.5) is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", broker.port))


def test_broker_that_cannot_listen_fails_with_its_log() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(Exception, match="exited at start-up"):
            EmbeddedBroker(port=taken).start(timeout_s=5)


def test_memory_storage_forgets_events_on_restart() -> None:
    port = free_loopback_port()
    with EmbeddedBroker(port=port) as broker:
        topics_ensure(bootstrap_servers=broker.bootstrap_servers, topics=["test.memory"], partitions=1)
        producer = producer_create(bootstrap_servers=broker.bootstrap_servers)
        producer.send("test.memory", key=b"1", value=b"kept?").get(timeout=10)
        producer.close()
    with (
        EmbeddedBroker(port=port) as broker,
        contextlib.closing(admin_create(bootstrap_servers=broker.bootstrap_servers)) as admin,
    ):
        assert "test.memory" not in admin.list_topics()


@contextlib.contextmanager
def _s3_server() -> Iterator[str]:
    port = free_loopback_port()
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("moto_server did not start")
            time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait()


def test_s3_storage_keeps_events_and_group_offsets_across_a_restart() -> None:
    if not Path(sys.executable).with_name("moto_server").exists():
        pytest.skip("moto_server is not installed")
    with _s3_server() as endpoint:
        credentials = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket="events")
        env = {**credentials, "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
        port = free_loopback_port()
        with EmbeddedBroker(port=port, storage="s3://events/", env=env) as broker:
            topics_ensure(bootstrap_servers=broker.bootstrap_servers, topics=["test.s3"], partitions=1)
            producer = producer_create(bootstrap_servers=broker.bootstrap_servers)
            for value in (b"one", b"two", b"three"):
                producer.send("test.s3", key=b"org-1", value=value)
            producer.flush()
            producer.close()
            consumer = consumer_create(
                bootstrap_servers=broker.bootstrap_servers, group_id="test.s3.group", session_timeout_ms=1000
            )
            consumer.assign([TopicPartition("test.s3", 0)])
            consumer.commit({TopicPartition("test.s3", 0): _offset(1)})
            consumer.close()
        with EmbeddedBroker(port=port, storage="s3://events/", env=env) as broker:
            assert _read_all(broker.bootstrap_servers, "test.s3", 1, 3) == [b"one", b"two", b"three"]
            consumer = consumer_create(bootstrap_servers=broker.bootstrap_servers, group_id="test.s3.group")
            assert consumer.committed(TopicPartition("test.s3", 0)) == 1
            consumer.close()


def _offset(offset: int):  # type: ignore[no-untyped-def]
    from kafka.structs import OffsetAndMetadata

    return OffsetAndMetadata(offset, "", -1)


def test_ensure_broker_starts_one_exports_its_address_and_restarts_it_if_it_dies(
    monkeypatch: pytest.MonkeyPatch, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(KAFKA_BOOTSTRAP_SERVERS=None)
    monkeypatch.setenv(BOOTSTRAP_ENV, "")  # recorded, so the address exported below is removed afterwards
    monkeypatch.delenv(BOOTSTRAP_ENV)
    broker = ensure_broker(topics=["test.ensure"], partitions=2)
    assert broker is not None
    try:
        assert os.environ[BOOTSTRAP_ENV] == broker.bootstrap_servers
        with contextlib.closing(admin_create(bootstrap_servers=broker.bootstrap_servers)) as admin:
            [described] = admin.describe_topics(["test.ensure"])
        assert len(described["partitions"]) == 2

        broker.kill()
        assert broker_problem(bootstrap_servers=broker.bootstrap_servers, timeout_s=0.5) is not None

        def back_with_topics() -> bool:
            if broker_problem(bootstrap_servers=broker.bootstrap_servers, timeout_s=0.5) is not None:
                return False
            with contextlib.closing(admin_create(bootstrap_servers=broker.bootstrap_servers)) as admin:
                return "test.ensure" in admin.list_topics()

        wait_for(back_with_topics)
    finally:
        broker.stop()
    assert not broker.running


def test_ensure_broker_with_kafka_configured_only_creates_the_topics(
    kafka_broker: EmbeddedBroker, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap_servers)
    assert ensure_broker(topics=["test.external"]) is None
    with contextlib.closing(admin_create(bootstrap_servers=kafka_broker.bootstrap_servers)) as admin:
        assert "test.external" in admin.list_topics()


def test_readiness_reports_an_unreachable_broker(
    kafka_broker: EmbeddedBroker, override_arbiter_settings
) -> None:
    override_arbiter_settings(KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap_servers)
    assert BrokerReadinessCheck()() is None
    override_arbiter_settings(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_loopback_port()}")
    assert "no Kafka broker answers" in (BrokerReadinessCheck()() or "")
