"""Webhook delivery benchmark: deliveries per second to a fast local receiver, and latency at 100 events/s.

    python benchmarks/bench_webhooks.py [--quick] [--database-url postgres://user@host:5432/name]

The receiver is a keep-alive HTTP server in its own process on loopback that answers 200 at once.
- Physical ceiling, measured in the same run: urllib3 keep-alive POSTs of the same signed body from as many
  threads as the worker has (`ARBITER_WEBHOOK_WORKERS`), with nothing stored.
- Baseline a user would pick: `requests.post()` per delivery (a fresh connection each) from the same number of
  threads, signing each body with `standardwebhooks`, storing nothing.
- Arbiter: the delivery worker draining persisted deliveries: claim (SKIP LOCKED), sign, egress guard (resolve,
  check), POST, record the attempt and the outcome in PostgreSQL.
Latency: events handled by the gateway's handler (one transaction each, as its consumer does) at 100 events/s
while the worker runs; measured from that transaction's commit to the receiver reading the request (the relay
and Kafka in front of it are measured by bench_events.py). Targets: Arbiter reaches 0.25x the ceiling, and p99
is under 1 s at 100 events/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DB_PREFIX = "arbiter_webhooks_bench"


def _receiver(port_out: Any, arrivals: Any, stop: Any) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrivals.put((self.headers.get("webhook-id") or "", time.time()))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_out.put(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()


def _configure(database_url: str, home: Path) -> None:
    os.environ["ARBITER_HOME"] = str(home)
    os.environ["ARBITER_SERVICES"] = "gateway"
    os.environ["ARBITER_LOG_LEVEL"] = "WARNING"
    os.environ["ARBITER_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    os.environ["ARBITER_WEBHOOK_POLL_SECONDS"] = "0.05"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.config.settings")
    os.environ["DATABASE_URL"] = database_url
    os.environ["ARBITER_DB_NAME"] = DB_PREFIX
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    parts = urlsplit(database_url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        if f"{DB_PREFIX}_gateway" not in existing:
            conn.execute(f'CREATE DATABASE "{DB_PREFIX}_gateway"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", database="default", interactive=False, verbosity=0)
    from services.gateway.models import WebhookEndpoint

    WebhookEndpoint.objects.unscoped().all().delete()


def _drain_arrivals(arrivals: Any) -> list[tuple[str, float]]:
    got = []
    while True:
        try:
            got.append(arrivals.get_nowait())
        except Exception:  # noqa: BLE001 - queue.Empty from another process's queue
            return got


def _wait_arrivals(arrivals: Any, count: int, timeout_s: float) -> list[tuple[str, float]]:
    got: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += _drain_arrivals(arrivals)
        time.sleep(0.01)
    if len(got) < count:
        raise RuntimeError(f"the receiver got {len(got)} of {count} requests")
    return got


def bench_ceiling(url: str, body: bytes, headers: dict[str, str], *, count: int, threads: int) -> float:
    import urllib3

    pool = urllib3.PoolManager(maxsize=threads)

    def send(_: int) -> None:
        pool.request("POST", url, body=body, headers=headers, retries=False)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as executor:
        list(executor.map(send, range(count)))
    return count / (time.perf_counter() - started)


def bench_baseline(url: str, body: str, secret: str, *, count: int, threads: int) -> float:
    from datetime import UTC, datetime

    import requests
    from standardwebhooks import Webhook

    webhook = Webhook(secret)

    def send(n: int) -> None:
        at = datetime.now(UTC)
        headers = {
            "webhook-id": f"msg_{n}",
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": webhook.sign(f"msg_{n}", at, body),
            "content-type": "application/json",
        }
        requests.post(url, data=body, headers=headers, timeout=10, allow_redirects=False)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as executor:
        list(executor.map(send, range(count)))
    return count / (time.perf_counter() - started)


def _events(org_id: int, count: int, start: int) -> list[Any]:
    from arbiter.events.envelope import Event

    return [
        Event(
            type="deployment.live",
            source="/arbiter/inference",
            subject=f"deployments/{n}",
            org_id=org_id,
            data={"deployment_id": n + 1, "model_id": 2, "version": 1, "name": "bench"},
        )
        for n in range(start, start + count)
    ]


def bench_arbiter(org_id: int, arrivals: Any, *, count: int) -> float:
    from django.db import transaction

    from arbiter.tenancy.scoping import org_scope
    from services.gateway.delivery import DeliveryWorker
    from services.gateway.events import on_public_event

    with transaction.atomic(), org_scope(org_id):
        for event in _events(org_id, count, 0):
            on_public_event(event)
    worker = DeliveryWorker()
    started = time.perf_counter()
    worker.drain(timeout_s=600)
    elapsed = time.perf_counter() - started
    _wait_arrivals(arrivals, count, 30)
    return count / elapsed


def bench_latency(org_id: int, arrivals: Any, *, rate: float, seconds: float) -> dict[str, float]:
    from django.db import connections, transaction

    from arbiter.tenancy.scoping import org_scope
    from services.gateway.delivery import DeliveryWorker
    from services.gateway.events import on_public_event
    from services.gateway.logic import message_id
    from services.gateway.models import WebhookEndpoint

    endpoint_id = WebhookEndpoint.objects.unscoped().get(org_id=org_id).pk
    stop = threading.Event()
    worker = DeliveryWorker()
    runner = threading.Thread(target=worker.run, args=(stop,))
    runner.start()
    committed: dict[str, float] = {}
    total = int(rate * seconds)
    events = _events(org_id, total, 1_000_000)
    started = time.perf_counter()
    for n, event in enumerate(events):
        due = started + n / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        with transaction.atomic(), org_scope(org_id):
            on_public_event(event)
        committed[message_id(event_id=event.id, endpoint_id=endpoint_id)] = time.time()
    got = _wait_arrivals(arrivals, total, 60)
    stop.set()
    runner.join(30)
    connections.close_all()
    latencies = sorted((at - committed[mid]) * 1000 for mid, at in got if mid in committed)
    return {
        "count": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": latencies[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, shorter latency run")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter"),
        help="the PostgreSQL server (default: DATABASE_URL, else the local one the tests use)",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root / "libs"), str(root)]
    context = multiprocessing.get_context("spawn")
    port_out, arrivals, stop = context.Queue(), context.Queue(), context.Event()
    receiver = context.Process(target=_receiver, args=(port_out, arrivals, stop), daemon=True)
    receiver.start()
    port = int(port_out.get(timeout=30))
    url = f"http://127.0.0.1:{port}/hook"
    _configure(args.database_url, Path(tempfile.mkdtemp(prefix="arbiter-bench-")))
    from arbiter.config.typed_settings import arbiter_settings
    from arbiter.tenancy.models import Org
    from arbiter.tenancy.scoping import org_scope
    from services.gateway import logic
    from services.gateway.delivery import signed_headers

    org, _ = Org.objects.get_or_create(slug="webhooks-bench", defaults={"name": "webhooks bench"})
    with org_scope(org.pk):
        endpoint = logic.endpoint_create(org_id=org.pk, url=url, events=["*"])
    threads = arbiter_settings().webhooks.workers
    count = 1_000 if args.quick else 5_000
    seconds = 5.0 if args.quick else 20.0
    from django.utils import timezone

    body = logic.message_body(type="deployment.live", time=timezone.now(), data={"deployment_id": 1})
    headers = signed_headers(message_id="msg_x", secrets=[endpoint.secret], body=body, at=timezone.now())
    ceiling = bench_ceiling(url, body.encode(), headers, count=count, threads=threads)
    baseline = bench_baseline(url, body, endpoint.secret, count=count, threads=threads)
    _drain_arrivals(arrivals)
    time.sleep(0.5)
    _drain_arrivals(arrivals)
    arbiter_rate = bench_arbiter(org.pk, arrivals, count=count)
    _drain_arrivals(arrivals)
    latency = bench_latency(org.pk, arrivals, rate=100, seconds=seconds)
    stop.set()
    receiver.join(5)

    # The keep-alive loop should be the fastest sender; when the baseline beats it, the receiver (not the sender)
    # bounds both, and the faster of the two is the honest ceiling: a lower one would flatter Arbiter's ratio.
    receiver_bound = baseline > ceiling
    ceiling = max(ceiling, baseline)
    ratio = arbiter_rate / ceiling
    rows = [
        (
            "physical ceiling: urllib3 keep-alive POSTs, nothing stored"
            + (" (the baseline was faster: receiver-bound, its rate is used)" if receiver_bound else ""),
            f"{ceiling:,.0f} req/s",
            "",
        ),
        (
            "baseline: requests.post + standardwebhooks sign per delivery",
            f"{baseline:,.0f} req/s",
            f"{baseline / ceiling:.2f}x ceiling",
        ),
        (
            "Arbiter: persisted, signed, guarded, attempts recorded",
            f"{arbiter_rate:,.0f} deliveries/s",
            f"{ratio:.2f}x ceiling (target >= 0.25x), {arbiter_rate / baseline:.2f}x baseline",
        ),
        (
            f"commit -> receiver at 100 events/s, {latency['count']:,} events",
            f"p50 {latency['p50_ms']:.1f} ms",
            f"p99 {latency['p99_ms']:.1f} ms (target < 1000 ms), max {latency['max_ms']:.1f} ms",
        ),
    ]
    print(
        f"webhook deliveries: PostgreSQL, receiver on loopback in its own process, {threads} threads; "
        f"{count:,} deliveries per rate; {os.cpu_count()} CPUs, load average {load_before:.1f} before the run"
    )
    for name, value, note in rows:
        print(f"  {name:<64} {value:>22}  {note}")
    met = ratio >= 0.25 and latency["p99_ms"] < 1000
    print("targets met" if met else "TARGETS MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
