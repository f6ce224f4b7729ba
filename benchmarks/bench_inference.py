"""Serving benchmark: Arbiter's classify endpoint over HTTP beside the in-process ceiling and a naive
baseline, all measured in the same run.

    python benchmarks/bench_inference.py [--quick] [--database-url postgres://user@host:5432/name]

Set-up (`arbiter.testing.serving`): a private ARBITER_HOME, a small two-head model trained with the ML core
(`head` strategy; the artifact is kept in the temp directory between runs), deployed through the inference
service's own logic and event handlers, served by `arbiter serve --services gateway,inference` (granian, the
default workers and threads). Arbiter is measured on SQLite, and with --database-url (default: the
DATABASE_URL variable when it names PostgreSQL) on PostgreSQL, with and without the request log.

Workload, over HTTP with keep-alive clients, on texts of about 30 tokens (OLID tweets from ../shared/data
when present, else generated sentences):
1. throughput (texts/s) of requests carrying 64 texts, from 1 and from 4 concurrent clients;
2. latency p50/p99 (ms) and throughput of single-text requests at 1, 8 and 32 concurrent clients.

Ceiling: the same model in this process, no HTTP, batches of 64 texts run by as many threads as the server
has runners (ONNX Runtime as deployed, and eager PyTorch fp32). Each configuration's 32-client single-text run
is cut into 5 slices, with the ONNX ceiling measured for as long as a slice before, between and after them;
each slice is held to the higher ceiling around it, and the goal is judged on the median slice. A shared machine's speed
drifts by a fifth within minutes (seen: 480 to 740 texts/s for the ceiling), so a ceiling from another minute
says more about the machine than about the server. The table's ratios use the best ceiling of the whole run,
which is stricter still. Baseline, with the same clients and texts: a
naive server that answers one request at a time (a single-threaded `http.server`) with the eager PyTorch
encoder in fp32; no batching across requests, no authentication, no database. Its ratio is printed beside its
own in-process (torch) speed so that a baseline running below its own ceiling is visible. The server's own cost:
the same server with the model made free (`free_model/sitecustomize.py`: each ONNX run answers a copy of one
real answer), 32 single-text clients: its CPU per request besides the model, which bounds the ratio to the
ceiling on any machine (a faster model leaves the same cost a larger share). Floor: one text per
call in this process on a session with a thread per core (the server's lone-batch session), whose p50 is what a
lone client's p50 over HTTP cannot go below.

Goals (issue: serving): single-text requests from 32 clients at >= 0.7x the ONNX ceiling with p99 < 250 ms,
one client's p50 < 10 ms, the same on PostgreSQL, and >= 0.8x of that with the request log on.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The ceiling runs its runners one per core, as the server does; the tokenizer's own threads would only take
# cores from them (measured: a lower ceiling), and the server runs without them too.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from arbiter.testing.serving import SAFE, SERVICES, SPAM, TOXIC, databases_drop  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
OLID_FILE = REPO_ROOT.parent / "shared" / "data" / "olid-training-v1.0.tsv"
TARGET_TOKENS = (26, 34)
# The 32-client single-text run is cut into this many slices, each beside a ceiling measured as long.
SLICES = 5

# --- set-up -------------------------------------------------------------------------------------------------


def cpu_description() -> str:
    """The processor and the vector instructions that decide ONNX Runtime's int8 speed (VNNI runs int8 dot
    products in one instruction; AVX2 alone needs three), so runs on different machines can be compared."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), ""
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []
    )
    vector = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if flag in flags]
    return f"{model or platform.machine()} ({', '.join(vector) or 'no AVX2'})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def setup(database_url: str | None, *, log_requests: bool = False) -> Environment:
    """A served model on a private home, set up by a child process (each configuration its own Django)."""
    home = Path(tempfile.mkdtemp(prefix="arbiter-bench-"))
    command = [sys.executable, "-m", "arbiter.testing.serving", "--home", str(home)]
    if database_url:
        command += ["--database-url", database_url]
    if log_requests:
        command.append("--log-requests")
    made = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if made.returncode != 0:
        raise SystemExit(f"setting up the served model failed:\n{made.stderr[-3000:]}")
    served = json.loads(made.stdout.strip().splitlines()[-1])
    return Environment(
        home=home,
        env=served["env"],
        key=served["key"],
        path=served["path"],
        runtime=served["runtime"],
        databases=served["databases"],
    )


def teardown(environment: Environment, database_url: str | None) -> None:
    if database_url and environment.databases:
        databases_drop(database_url, environment.databases)
    shutil.rmtree(environment.home, ignore_errors=True)


def artifact_dir(environment: Environment) -> Path:
    """The deployed artifact as the server unpacked it (in the home's artifact cache)."""
    configs = sorted((environment.home / "inference" / "artifacts").rglob("config.json"))
    if not configs:
        raise SystemExit("the served model's artifact is not in the home's artifact cache")
    return configs[0].parent


# --- the ceiling: the model in this process, batched, no HTTP -----------------------------------------------


_ceiling_predictors: dict[tuple[Path, str], Any] = {}


def ceiling(folder: Path, texts: list[str], *, runtime: str, runners: int, seconds: float) -> float:
    """Texts per second of batches of 64 run by `runners` threads (ONNX Runtime: one intra-op thread each, as
    the server's micro-batcher runs them; torch: its default threads)."""
    from arbiter.ml import Predictor, artifact_load

    predictor = _ceiling_predictors.get((folder, runtime))
    if predictor is None:
        predictor = Predictor.load(artifact_load(folder), runtime=runtime, threads=1)  # type: ignore[arg-type]
        _ceiling_predictors[(folder, runtime)] = predictor
    batches = [texts[i : i + 64] for i in range(0, len(texts) - 63, 64)]
    predictor.predict(batches[0])
    done = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run(index: int) -> None:
        turn = index
        while time.perf_counter() < deadline:
            batch = batches[turn % len(batches)]
            turn += runners
            predictor.predict(batch)
            with lock:
                done[0] += len(batch)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / (time.perf_counter() - started)


def lone_latency(folder: Path, texts: list[str], *, threads: int, calls: int) -> float:
    """p50 ms of one text per call in this process, on a session with `threads` threads (what the server's
    lone-batch session runs): the floor under a lone client's p50 over HTTP."""
    from arbiter.ml import Predictor, artifact_load

    predictor = Predictor.load(artifact_load(folder), runtime="onnx", threads=threads)
    for text in texts[:10]:
        predictor.predict([text])
    timings = []
    for i in range(calls):
        started = time.perf_counter()
        predictor.predict([texts[i % len(texts)]])
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


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
    # The server's CPU time (all its processes and threads) per request: where the load goes, whatever else
    # the machine is doing.
    cpu_ms: float = 0.0
    # Interleaved with the ONNX ceiling (the 32-client run): the ceilings measured between its slices (texts/s)
    # and each slice's ratio to the higher of the two around it.
    ceilings: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list, repr=False)
    texts: int = 0
    wall_s: float = 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its children that are still running (the web server's workers)."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class Client:
    """One keep-alive HTTP/1.1 client on a plain socket: it sends each request in one write and reads the answer by
    its Content-Length (reconnecting when the server closes the connection, as the naive baseline's HTTP/1.0
    does). The clients run on the cores they measure, so they are kept cheap: http.client, which parses every
    answer's headers into a message object, cost about twice the CPU per request."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        fields = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", **headers}
        self.head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def _fill(self, buffer: bytes) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return buffer + chunk

    def post(self, path: str, body: bytes) -> int:
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=300)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
            self.sock.sendall(request.encode() + body)
            buffer = self.buffer
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                buffer = self._fill(buffer)
            head = buffer[:end].decode("latin-1").lower()
            status = int(head[9:12])
            length = int(head.split("\r\ncontent-length:", 1)[1].split("\r\n", 1)[0])
            while len(buffer) < end + 4 + length:
                buffer = self._fill(buffer)
            self.buffer = buffer[end + 4 + length :]
            if "\r\nconnection: close" in head or (
                head.startswith("http/1.0") and "\r\nconnection: keep-alive" not in head
            ):
                self.close()
            return status
        except (OSError, ValueError, IndexError):
            self.close()
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
    return summary(latencies, texts=texts[0], errors=errors[0], wall_s=time.perf_counter() - started)


def summary(latencies: list[float], *, texts: int, errors: int, wall_s: float) -> Result:
    ordered = sorted(latencies)
    return Result(
        requests=len(ordered),
        errors=errors,
        texts_per_s=texts / wall_s,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        latencies=latencies,
        texts=texts,
        wall_s=wall_s,
    )


def interleaved(
    run: Callable[[float], Result], ceiling_now: Callable[[], float], *, seconds: float, slices: int
) -> Result:
    """`run` in `slices` slices of `seconds / slices`, the ceiling measured before, between and after them: on a
    machine whose speed drifts, each slice is held to the ceiling of the same minute (the higher of the two
    around it), and the row reports every slice's requests together."""
    ceilings = [ceiling_now()]
    parts: list[Result] = []
    for _ in range(slices):
        parts.append(run(seconds / slices))
        ceilings.append(ceiling_now())
    result = summary(
        [latency for part in parts for latency in part.latencies],
        texts=sum(part.texts for part in parts),
        errors=sum(part.errors for part in parts),
        wall_s=sum(part.wall_s for part in parts),
    )
    result.ceilings = ceilings
    result.ratios = [
        part.texts_per_s / max(before, after)
        for part, before, after in zip(parts, ceilings, ceilings[1:], strict=False)
    ]
    return result


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not happen within {timeout:.0f} s")


def workload(
    port: int,
    path: str,
    headers: dict[str, str],
    texts: list[str],
    *,
    quick: bool,
    slow: bool,
    pid: int,
    ceiling_now: Callable[[], float] | None = None,
) -> dict[str, Result]:
    """The workloads against one server; with `ceiling_now`, the 32-client single-text run is interleaved with
    the ceiling (`interleaved`; the server idles while the ceiling runs)."""
    seconds = 4.0 if quick else 15.0
    batches = [
        (json.dumps({"inputs": texts[i : i + 64]}).encode(), 64) for i in range(0, len(texts) - 63, 64)
    ]
    singles = [(json.dumps({"inputs": [text]}).encode(), 1) for text in texts]
    results = {}
    # Throughput: one client shows a lone caller's rate; four keep a server that overlaps requests busy.
    for clients in (1, 4):
        before = cpu_seconds(pid)
        result = load(
            port, path, headers, batches, clients=clients, seconds=seconds, min_requests=3 if slow else 10
        )
        result.cpu_ms = (cpu_seconds(pid) - before) * 1000 / max(result.requests, 1)
        results[f"batch64 x{clients}"] = result
    for clients in (1, 8, 32):
        cpu = [0.0]

        def run(duration: float, clients: int = clients, cpu: list[float] = cpu) -> Result:
            before = cpu_seconds(pid)
            part = load(
                port,
                path,
                headers,
                singles,
                clients=clients,
                seconds=duration,
                min_requests=max(clients * 2, 20),
            )
            cpu[0] += cpu_seconds(pid) - before
            return part

        if ceiling_now is not None and clients == 32:
            result = interleaved(run, ceiling_now, seconds=seconds, slices=SLICES)
        else:
            result = run(seconds)
        result.cpu_ms = cpu[0] * 1000 / max(result.requests, 1)
        results[f"single x{clients}"] = result
    return results


def serve(
    environment: Environment, quick: bool, texts: list[str], ceiling_now: Callable[[], float]
) -> dict[str, Result]:
    """Start `arbiter serve` on the environment, run the workload against it, stop it."""
    with served(environment) as (port, pid, headers):
        return workload(
            port,
            environment.path,
            headers,
            texts,
            quick=quick,
            slow=False,
            pid=pid,
            ceiling_now=ceiling_now,
        )


def server_cost(environment: Environment, quick: bool, texts: list[str]) -> Result:
    """32 single-text clients against the same server with the model made free (`free_model/sitecustomize.py`:
    each ONNX run answers a copy of one real answer): what a request costs the server besides the model."""
    singles = [(json.dumps({"inputs": [text]}).encode(), 1) for text in texts]
    with served(environment, free_model=True) as (port, pid, headers):
        load(port, environment.path, headers, singles, clients=32, seconds=1.0, min_requests=64)
        before = cpu_seconds(pid)
        result = load(
            port,
            environment.path,
            headers,
            singles,
            clients=32,
            seconds=4.0 if quick else 15.0,
            min_requests=64,
        )
        result.cpu_ms = (cpu_seconds(pid) - before) * 1000 / max(result.requests, 1)
        return result


@contextlib.contextmanager
def served(
    environment: Environment, *, free_model: bool = False
) -> Iterator[tuple[int, int, dict[str, str]]]:
    """`arbiter serve` on the environment, answering: its port, pid and the clients' headers."""
    port = free_port()
    env = dict(environment.env)
    if free_model:
        folder = str(Path(__file__).resolve().parent / "free_model")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH", "")]))
        env["ARBITER_BENCH_FREE_MODEL"] = "1"
    server = subprocess.Popen(
        [sys.executable, "-m", "arbiter.cli", "serve", "--services", SERVICES, "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        headers = {"Authorization": f"Bearer {environment.key}"}
        probe = json.dumps({"inputs": ["warm up"]}).encode()
        wait_until(
            lambda: Client(port, headers).post(environment.path, probe) == 200,
            timeout=180,
            what="the Arbiter server answering a classify request",
        )
        yield port, server.pid, headers
    finally:
        server.terminate()
        server.wait(timeout=30)


def baseline(folder: Path, environment: Environment, quick: bool, texts: list[str]) -> dict[str, Result]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--baseline-server", str(port), str(folder)],
        env=environment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != b"ready":
            raise SystemExit("the baseline server did not start")
        return workload(port, "/classify", {}, texts, quick=quick, slow=True, pid=server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes in all)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "")
        if os.environ.get("DATABASE_URL", "").startswith("postgres")
        else "",
        help="PostgreSQL server URL (default: DATABASE_URL when it is PostgreSQL); empty: SQLite only",
    )
    parser.add_argument(
        "--baseline-server", nargs=2, metavar=("PORT", "ARTIFACT_DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.baseline_server:
        baseline_serve(int(args.baseline_server[0]), args.baseline_server[1])
        return 0

    texts = benchmark_texts(640)
    configurations: list[tuple[str, str | None, bool]] = [("SQLite", None, False)]
    if args.database_url:
        configurations += [
            ("PostgreSQL", args.database_url, False),
            ("PostgreSQL+log", args.database_url, True),
        ]
    measured: dict[str, dict[str, Result]] = {}
    runtime = ""
    seconds = 4.0 if args.quick else 15.0
    runners = max(1, min(4, os.cpu_count() or 1))
    # The ONNX ceiling is measured between the slices of each configuration's 32-client run (see the docstring);
    # the table holds every row to the best of them all.
    onnx_ceilings: list[float] = []
    for name, url, log_requests in configurations:
        environment = setup(url, log_requests=log_requests)
        try:

            def ceiling_now(environment: Environment = environment) -> float:
                # As long as a slice of the 32-client run: the same minute.
                measured_ceiling = ceiling(
                    artifact_dir(environment),
                    texts,
                    runtime="onnx",
                    runners=runners,
                    seconds=seconds / SLICES,
                )
                onnx_ceilings.append(measured_ceiling)
                return measured_ceiling

            measured[name] = serve(environment, args.quick, texts, ceiling_now)
            runtime = environment.runtime
            folder = artifact_dir(environment)
            if name == "SQLite":
                torch_ceiling = ceiling(folder, texts, runtime="torch", runners=1, seconds=seconds)
                floor_ms = lone_latency(folder, texts, threads=runners, calls=100 if args.quick else 400)
                naive = baseline(folder, environment, args.quick, texts)
                free = server_cost(environment, args.quick, texts)
        finally:
            teardown(environment, url)

    print(
        f"\nInference serving{' (quick)' if args.quick else ''}: runtime {runtime}, {os.cpu_count()} CPUs "
        f"{cpu_description()}, texts of {TARGET_TOKENS[0]}-{TARGET_TOKENS[1]} tokens"
    )
    onnx_ceiling = max(onnx_ceilings)
    print(
        f"in-process ceiling, batches of 64: ONNX Runtime ({runners} runners) {onnx_ceiling:.0f} texts/s "
        f"(the best of {len(onnx_ceilings)} measured between the slices of each configuration's single x32 run: "
        f"{', '.join(f'{c:.0f}' for c in onnx_ceilings)}); "
        f"eager torch fp32 (the baseline's engine, one at a time) {torch_ceiling:.0f} texts/s"
    )
    print(
        f"in-process floor, one text per call on {runners} threads (the lone-batch session): p50 {floor_ms:.1f} ms; "
        f"a lone client's p50 over HTTP is this plus what a request costs the server"
    )
    print(
        f"{'workload':<13}{'server':<16}{'texts/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>11}{'errors':>7}"
        f"{'x ceiling':>10}{'x baseline':>11}"
    )
    for workload_name in naive:
        theirs = naive[workload_name]
        rows = [*((name, results[workload_name]) for name, results in measured.items()), ("baseline", theirs)]
        for name, result in rows:
            own_ceiling = torch_ceiling if name == "baseline" else onnx_ceiling
            print(
                f"{workload_name:<13}{name:<16}{result.texts_per_s:>9.1f}{result.p50_ms:>9.1f}"
                f"{result.p99_ms:>9.1f}{result.cpu_ms:>11.1f}{result.errors:>7}{result.texts_per_s / own_ceiling:>9.2f}x"
                + (
                    f"{result.texts_per_s / max(theirs.texts_per_s, 1e-9):>10.1f}x"
                    if name != "baseline"
                    else ""
                )
            )
    errors = sum(r.errors for results in measured.values() for r in results.values())
    verdicts = []
    for name, results in measured.items():
        single = results["single x32"]
        one = results["single x1"]
        goal = 0.8 * 0.7 if name.endswith("+log") else 0.7
        ratio = statistics.median(single.ratios)
        met = ratio >= goal and single.p99_ms < 250 and one.p50_ms < 10
        verdicts.append(
            f"{name}: single x32 {ratio:.2f}x the ceiling of the same minute (median of its slices: "
            f"{', '.join(f'{r:.2f}' for r in single.ratios)}; ceilings between them "
            f"{', '.join(f'{c:.0f}' for c in single.ceilings)}; {single.texts_per_s / onnx_ceiling:.2f}x the "
            f"run's best) (goal {goal:.2f}x), "
            f"p99 {single.p99_ms:.0f} ms (< 250; 32 closed-loop clients wait {32000 / single.texts_per_s:.0f} ms on "
            f"average at this rate), single x1 p50 {one.p50_ms:.1f} ms (< 10; "
            f"{one.p50_ms - floor_ms:.1f} ms above the in-process floor): " + ("met" if met else "NOT met")
        )
    # At the ceiling the model takes `runners` cores for 1/ceiling s a text; the rest of a request is the server's.
    model_ms = runners * 1000 / onnx_ceiling
    print(
        f"the server's own cost (SQLite, 32 single-text clients, the model made free): {free.texts_per_s:.0f} "
        f"requests/s, {free.cpu_ms:.2f} ms of server CPU a request (tokenising included), p99 {free.p99_ms:.0f} ms; "
        f"the model's CPU a text at the ceiling {model_ms:.2f} ms, so 32 clients can reach about "
        f"{model_ms / (model_ms + free.cpu_ms):.2f}x the ceiling here"
    )
    print("\n".join(verdicts) + f"\nerrors: {errors + free.errors}")
    return 1 if errors or free.errors else 0


if __name__ == "__main__":
    sys.exit(main())
