"""Serving benchmark: Arbiter's classify endpoint over HTTP beside a naive baseline measured in the same run.

    python benchmarks/bench_inference.py [--quick] [--database-url postgres://user@host:5432/name]

Set-up: a private ARBITER_HOME (SQLite, or PostgreSQL with --database-url), a small two-head model trained
with the ML core (`head` strategy; the artifact is kept in the temp directory between runs), deployed through
the inference service's own logic and event handlers, served by `arbiter serve --services gateway,inference`
(gunicorn, the default workers and threads).

Workload, over HTTP with keep-alive clients, on texts of about 30 tokens (OLID tweets from ../shared/data
when present, else generated sentences):
1. throughput (texts/s) of requests carrying 64 texts, from 1 and from 4 concurrent clients;
2. latency p50/p99 (ms) and throughput of single-text requests at 1, 8 and 32 concurrent clients.

Baseline, with the same clients and texts: a naive server that answers one request at a time (a
single-threaded `http.server`) with the ML core's eager PyTorch encoder in fp32 and the same heads; no
batching across requests, no authentication, no database. Aims: at least 3x the baseline's batch
throughput (4 clients), and a single-request p50 under 20 ms at one client.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OLID_FILE = REPO_ROOT.parent / "shared" / "data" / "olid-training-v1.0.tsv"
SERVICES = "gateway,inference"
TARGET_TOKENS = (26, 34)

TOXIC = [
    "you are an idiot",
    "I hate you so much",
    "shut up you moron",
    "you are worthless trash",
    "go away loser",
    "what a stupid fool you are",
    "you disgusting pig",
    "nobody likes you, idiot",
]
SAFE = [
    "have a nice day",
    "thanks for your help",
    "the weather is lovely today",
    "I like this song",
    "see you tomorrow",
    "great work on the project",
    "the meeting is at noon",
    "I enjoyed the book",
]
SPAM = [
    "buy cheap pills now",
    "click here to win money",
    "free prize waiting for you",
    "limited offer, act now",
    "earn cash from home fast",
    "cheap watches on sale today",
    "win a free phone now",
    "lowest loan rates",
]


# --- set-up -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def training_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for suffix in ("", "!", "."):
        for texts, toxicity, topic in (
            (TOXIC, "toxic", ["insult"]),
            (SAFE, "safe", []),
            (SPAM, "safe", ["spam"]),
        ):
            for text in texts:
                rows.append(
                    {
                        "row": len(rows) + 1,
                        "input": text + suffix,
                        "labels": {"toxicity": [toxicity], "topic": topic},
                        "split": "train",
                    }
                )
    return rows


def trained_artifact() -> bytes:
    """The benchmark model's artifact, trained once and kept in the temp directory (keyed by the ML core)."""
    from arbiter.testing.artifacts import cached_head_artifact

    return cached_head_artifact(
        cache_dir=Path(tempfile.gettempdir()),
        prefix="arbiter-bench-inference-",
        rows=training_rows(),
        heads=[
            {"name": "toxicity", "labels": ["safe", "toxic"]},
            {"name": "topic", "labels": ["insult", "spam"], "multi_label": True},
        ],
        max_epochs=40,
    )


def benchmark_texts(count: int) -> list[str]:
    """Texts of about 30 tokens (MiniLM's tokenizer): tweets when the shared data is there, else generated."""
    from transformers import AutoTokenizer

    from arbiter.ml import encoder_resolve

    tokenizer = AutoTokenizer.from_pretrained(encoder_resolve("all-MiniLM-L6-v2"))
    candidates: list[str] = []
    if OLID_FILE.is_file():
        for line in OLID_FILE.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) == 5:
                candidates.append(parts[1])
    rng = random.Random(7)
    words = " ".join(TOXIC + SAFE + SPAM).split()
    while len(candidates) < 5 * count:
        candidates.append(" ".join(rng.choice(words) for _ in range(24)))
    lengths = tokenizer(candidates)["input_ids"]
    chosen = [
        text
        for text, ids in zip(candidates, lengths, strict=True)
        if TARGET_TOKENS[0] <= len(ids) <= TARGET_TOKENS[1]
    ]
    rng.shuffle(chosen)
    return chosen[:count]


@dataclass
class Environment:
    home: Path
    env: dict[str, str]
    key: str
    path: str
    runtime: str
    databases: list[str] = field(default_factory=list)


def database_env(url: str | None, home: Path) -> tuple[dict[str, str], list[str]]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "ARBITER_DB_NAME"))
    }
    env.update(
        ARBITER_HOME=str(home),
        ARBITER_SERVICES=SERVICES,
        ARBITER_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        ARBITER_ENV="development",
    )
    if not url:
        return env, []
    import psycopg

    prefix = f"arbiter_bench_{os.getpid()}"
    names = [f"{prefix}_{service}" for service in SERVICES.split(",")]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')
    env.update(DATABASE_URL=url, ARBITER_DB_NAME=prefix)
    return env, names


def setup(database_url: str | None) -> Environment:
    home = Path(tempfile.mkdtemp(prefix="arbiter-bench-"))
    env, databases = database_env(database_url, home)
    os.environ.clear()
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "arbiter.config.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from arbiter.events.envelope import Event
    from arbiter.events.handlers import handlers_for
    from arbiter.events.models import OutboxEvent
    from arbiter.storage import get_blob_store
    from arbiter.tenancy.logic import org_bootstrap
    from arbiter.tenancy.scoping import org_scope
    from services.inference.logic import deployment_create
    from services.inference.models import Deployment
    from services.inference.serving.cache import model_cache

    call_command("migrate_services", verbosity=0)
    boot = org_bootstrap(slug="bench", email="bench@example.com")
    get_blob_store().put_bytes("artifacts/bench/model.tar.gz", trained_artifact())
    handlers = handlers_for("inference")

    def deliver(event: Event) -> None:
        with transaction.atomic(using="inference"), org_scope(event.org_id):
            handlers[event.type](event)

    org_id = boot.org.pk
    deliver(
        Event(
            type="training.completed",
            source="/arbiter/training",
            subject="models/1/versions/1",
            org_id=org_id,
            data={
                "run_id": 1,
                "model_id": 1,
                "version": 1,
                "model_name": "bench",
                "artifact": "artifacts/bench/model.tar.gz",
            },
        )
    )
    with org_scope(org_id):
        deployment, _ = deployment_create(org_id=org_id, model=1, version=1, actor="bench", name="bench")
    requested = OutboxEvent.objects.using("inference").get(type="deployment.requested")
    deliver(Event.from_json(requested.payload))
    live = Deployment.objects.unscoped().get(pk=deployment.pk)
    if live.status != "live":
        raise SystemExit(f"the benchmark deployment did not go live: {live.reason}: {live.message}")
    # The server process serves; this one only measures.
    model_cache().clear()
    return Environment(
        home=home,
        env=env,
        key=boot.api_key,
        runtime=live.runtime,
        databases=databases,
        path=f"/api/v1/orgs/bench/deployments/{deployment.pk}/classify",
    )


def teardown(environment: Environment, database_url: str | None) -> None:
    from django.db import connections

    connections.close_all()
    if database_url and environment.databases:
        import psycopg

        with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
            for name in environment.databases:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    shutil.rmtree(environment.home, ignore_errors=True)


# --- the baseline: eager torch fp32, one request at a time --------------------------------------------------


def baseline_serve(port: int, artifact_dir: str) -> None:
    """A naive classification server: single-threaded, eager PyTorch in fp32, no batching across requests."""
    from arbiter.ml import Predictor, artifact_load

    artifact = artifact_load(Path(artifact_dir))
    predictor = Predictor.load(artifact, runtime="torch")
    runtime = predictor.runtime
    encoder = runtime.encoder  # type: ignore[union-attr]

    def predict(texts: list[str]) -> list[dict[str, Any]]:
        embeddings = encoder.embed(texts, max_tokens=artifact.max_tokens, bf16=False)
        probabilities = predictor.model.probabilities(
            texts=texts, encoder_logits=predictor.model.encoder_logits(embeddings)
        )
        return [{head: probabilities[head][i].tolist() for head in probabilities} for i in range(len(texts))]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = json.dumps({"results": predict(body["inputs"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.HTTPServer):
        # Room for every client's connection while one request is served (the default backlog is 5).
        request_queue_size = 128

    predict(["warm up"])
    server = Server(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


# --- measuring ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    errors: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float


class Client:
    """One keep-alive HTTP client (it reconnects when a server closes the connection)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.headers = {"Content-Type": "application/json", **headers}

    def post(self, path: str, body: bytes) -> int:
        try:
            self.connection.request("POST", path, body, self.headers)
            response = self.connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.connection.close()
            return 0


def load(
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: list[tuple[bytes, int]],
    *,
    clients: int,
    seconds: float,
    min_requests: int,
) -> Result:
    """Closed-loop clients posting the bodies in turn for `seconds` (and at least `min_requests` in all)."""
    latencies: list[float] = []
    texts = [0]
    errors = [0]
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + seconds

    def worker(index: int) -> None:
        client = Client(port, headers)
        turn = index
        while True:
            with lock:
                if time.perf_counter() >= deadline and len(latencies) >= min_requests:
                    return
            body, count = bodies[turn % len(bodies)]
            turn += clients
            began = time.perf_counter()
            status = client.post(path, body)
            elapsed = time.perf_counter() - began
            with lock:
                latencies.append(elapsed)
                if status == 200:
                    texts[0] += count
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return Result(
        requests=len(ordered),
        errors=errors[0],
        texts_per_s=texts[0] / wall,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not happen within {timeout:.0f} s")


def workload(
    port: int, path: str, headers: dict[str, str], texts: list[str], *, quick: bool, slow: bool
) -> dict[str, Result]:
    seconds = 4.0 if quick else 15.0
    batches = [
        (json.dumps({"inputs": texts[i : i + 64]}).encode(), 64) for i in range(0, len(texts) - 63, 64)
    ]
    singles = [(json.dumps({"inputs": [text]}).encode(), 1) for text in texts]
    results = {}
    # Throughput: one client shows a lone caller's rate; four keep a server that overlaps requests busy.
    for clients in (1, 4):
        results[f"batch64 x{clients}"] = load(
            port, path, headers, batches, clients=clients, seconds=seconds, min_requests=3 if slow else 10
        )
    for clients in (1, 8, 32):
        results[f"single x{clients}"] = load(
            port, path, headers, singles, clients=clients, seconds=seconds, min_requests=max(clients * 2, 20)
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    parser.add_argument("--database-url", help="PostgreSQL server URL (default: SQLite under a temp home)")
    parser.add_argument(
        "--baseline-server", nargs=2, metavar=("PORT", "ARTIFACT_DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.baseline_server:
        baseline_serve(int(args.baseline_server[0]), args.baseline_server[1])
        return 0

    environment = setup(args.database_url)
    texts = benchmark_texts(640)
    children: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arbiter.cli",
                "serve",
                "--services",
                SERVICES,
                "--bind",
                f"127.0.0.1:{port}",
            ],
            env=environment.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        children.append(server)
        headers = {"Authorization": f"Bearer {environment.key}"}
        probe = json.dumps({"inputs": ["warm up"]}).encode()
        wait_until(
            lambda: Client(port, headers).post(environment.path, probe) == 200,
            timeout=180,
            what="the Arbiter server answering a classify request",
        )
        arbiter = workload(port, environment.path, headers, texts, quick=args.quick, slow=False)
        server.terminate()
        server.wait(timeout=30)

        from services.inference.serving.artifacts import artifact_folder

        baseline_port = free_port()
        baseline = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--baseline-server",
                str(baseline_port),
                str(artifact_folder("artifacts/bench/model.tar.gz")),
            ],
            env=environment.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        children.append(baseline)
        assert baseline.stdout is not None
        if baseline.stdout.readline().strip() != b"ready":
            raise SystemExit("the baseline server did not start")
        naive = workload(baseline_port, "/classify", {}, texts, quick=args.quick, slow=True)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
                child.wait(timeout=30)
        teardown(environment, args.database_url)

    database = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"\nInference serving{' (quick)' if args.quick else ''}: runtime {environment.runtime}, {database}, "
        f"{os.cpu_count()} CPUs, texts of {TARGET_TOKENS[0]}-{TARGET_TOKENS[1]} tokens"
    )
    print(
        f"{'workload':<14}{'':>3}{'arbiter texts/s':>16}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'baseline texts/s':>18}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}"
    )
    for name, ours in arbiter.items():
        theirs = naive[name]
        print(
            f"{name:<17}{ours.texts_per_s:>16.1f}{ours.p50_ms:>9.1f}{ours.p99_ms:>9.1f}{ours.errors:>8}"
            f"{theirs.texts_per_s:>18.1f}{theirs.p50_ms:>9.1f}{theirs.p99_ms:>9.1f}"
            f"{ours.texts_per_s / max(theirs.texts_per_s, 1e-9):>7.1f}x"
        )
    ratio = arbiter["batch64 x4"].texts_per_s / max(naive["batch64 x4"].texts_per_s, 1e-9)
    p50 = arbiter["single x1"].p50_ms
    errors = sum(result.errors for result in arbiter.values())
    print(
        f"aim: batch throughput >= 3x baseline: {'met' if ratio >= 3 else 'NOT met'} ({ratio:.1f}x); "
        f"single-request p50 < 20 ms: {'met' if p50 < 20 else 'NOT met'} ({p50:.1f} ms); errors: {errors}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
