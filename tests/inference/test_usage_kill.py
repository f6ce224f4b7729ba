"""A web worker killed with SIGKILL under load loses no usage and counts none twice: every classification
answered 200 is in the day's usage and the request log exactly once, and the only counted calls that were not
answered are the few in flight when the worker died (committed, then the connection dropped)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from arbiter.testing.serving import databases_drop

pytestmark = pytest.mark.slow

CLIENTS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def classify(connection: http.client.HTTPConnection, path: str, key: str, text: str) -> int:
    body = json.dumps({"inputs": [text]})
    connection.request(
        "POST", path, body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )
    response = connection.getresponse()
    response.read()
    return response.status


def test_every_answered_classification_is_counted_once_when_the_web_worker_is_killed(tmp_path: Path):
    database_url = os.environ["DATABASE_URL"]
    made = subprocess.run(
        [sys.executable, "-m", "arbiter.testing.serving", "--home", str(tmp_path), "--log-requests"]
        + ["--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    served = json.loads(made.stdout.strip().splitlines()[-1])
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "arbiter.cli", "serve", "--services", "gateway,inference"]
        + ["--bind", f"127.0.0.1:{port}", "--threads", "8"],
        env=served["env"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )
    answered: set[str] = set()
    refused: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        sent = 0
        while not stop.is_set():
            text = f"client {index} call {sent}: you are an idiot"
            sent += 1
            try:
                status = classify(connection, served["path"], served["key"], text)
            except (OSError, http.client.HTTPException):
                connection.close()
                status = 0
            with lock:
                (answered if status == 200 else refused).add(text)
            if status != 200:
                time.sleep(0.05)

    try:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                if classify(probe, served["path"], served["key"], "warm up") == 200:
                    break
            except OSError:
                time.sleep(0.5)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()

        def answered_count() -> int:
            with lock:
                return len(answered)

        def wait_for(count: int) -> None:
            until = time.monotonic() + 240
            while answered_count() < count:
                assert time.monotonic() < until, f"only {answered_count()} answers"
                time.sleep(0.05)

        wait_for(100)
        workers = psutil.Process(server.pid).children()
        assert workers, "granian runs its workers as children"
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
        killed_at = answered_count()
        wait_for(killed_at + 100)  # granian started a new worker, which answers again
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)

    try:
        prefix = served["env"]["ARBITER_DB_NAME"]
        server_url = database_url.rsplit("/", 1)[0]
        with psycopg.connect(f"{server_url}/{prefix}_inference") as connection:
            logged = connection.execute(
                "SELECT text, count(*) FROM inference_requestlogentry GROUP BY text"
            ).fetchall()
            requests, units = connection.execute(
                "SELECT sum(requests), sum(units) FROM inference_usageday"
            ).fetchone()
            announced = [
                json.loads(payload)["data"]
                for (payload,) in connection.execute(
                    "SELECT payload FROM events_outbox WHERE type = 'usage.recorded'"
                )
            ]
    finally:
        databases_drop(database_url, served["databases"])

    counts = dict(logged)
    assert refused, "the kill happened while requests were in flight"
    assert [text for text, count in counts.items() if count > 1] == []  # nothing counted twice
    assert answered - counts.keys() == set()  # nothing answered went uncounted
    in_flight = counts.keys() - answered - {"warm up"}
    assert in_flight <= refused and len(in_flight) <= CLIENTS  # committed, then the worker died
    assert requests == units == len(counts)
    assert sum(event["units"] for event in announced) == units
